// Plain-C interface of the CUDA selective scan (no torch headers): the kernels in
// selective_scan.cu compile on their own with `nvcc -c`, and selective_scan_binding.cpp
// fills this struct from torch tensors.
#pragma once
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

enum HJSSDtype { HJSS_F32 = 0, HJSS_F16 = 1, HJSS_BF16 = 2 };

// Layouts (all contiguous): u, delta, z, out, ypre, dout, du, ddelta, dz: (B, D, L) of
// `dtype`; B, C: (B, G, N, L) of `dtype`; A: (D, N) fp32; D, bias: (D,) fp32;
// h0, hT, dhT, dh0: (B, D, N) fp32; states: (B, D, n_chunks, N) fp32, the state entering
// each chunk; dB, dC: (B, G, N, L) fp32 accumulated with atomics (zero them first);
// dA_part: (B, D, N), dD_part, dbias_part: (B, D) fp32 per-batch partial sums.
typedef struct {
    int batch, dim, seqlen, dstate, n_groups, n_chunks;
    int dtype, zoh, delta_softplus, has_D, has_z, has_bias, has_h0, has_dhT;
    const void *u, *delta, *z, *B, *C;
    const float *A, *D, *bias, *h0;
    void *out, *ypre;
    float *hT, *states;
    const void *dout;
    const float *dhT;
    void *du, *ddelta, *dz;
    float *dB, *dC, *dA_part, *dD_part, *dbias_part, *dh0;
} HJSSParams;

// Chunk length (threads x items per thread) and the largest state size supported.
#define HJSS_THREADS 128  // must equal HJSEQ_SCAN_THREADS (block_scan.h)
#define HJSS_ITEMS 16  // two (bf16/fp16) or four (fp32) 16-byte vectors
#define HJSS_CHUNK (HJSS_THREADS * HJSS_ITEMS)
#define HJSS_MAX_N 256

// Return a cudaError_t as int (0 = success).
int hjss_forward(const HJSSParams *p, cudaStream_t stream);
int hjss_backward(const HJSSParams *p, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
