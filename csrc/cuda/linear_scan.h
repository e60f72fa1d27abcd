// Plain-C interface of the CUDA linear scan h_t = a_t h_{t-1} + b_t (no torch headers):
// linear_scan.cu compiles alone with `nvcc -c`; linear_scan_binding.cpp fills the struct.
#pragma once
#include <cuda_runtime.h>

#include "selective_scan.h"  // dtype codes (HJSS_F32/F16/BF16), block and chunk sizes

#ifdef __cplusplus
extern "C" {
#endif

// Layouts (all contiguous): a, b, out, dout, da, db: (B, D, L) of `dtype`; h0, hT, dhT,
// dh0: (B, D) fp32; states: (B, D, n_chunks) fp32, the state entering each chunk of
// HJSS_CHUNK steps.
typedef struct {
    int batch, dim, seqlen, n_chunks, dtype, has_h0, has_dhT;
    const void *a, *b;
    const float *h0;
    void *out;
    float *hT, *states;
    const void *dout;
    const float *dhT;
    void *da, *db;
    float *dh0;
} HJLSParams;

int hjls_forward(const HJLSParams *p, cudaStream_t stream);
int hjls_backward(const HJLSParams *p, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
