// CUDA linear scan h_t = a_t h_{t-1} + b_t over the last axis of (B, D, L), forward and
// backward (see hjseq/ops/linear_scan/ref.py). One block per row (d, b); each of the
// HJSS_THREADS threads owns HJSS_ITEMS consecutive steps of a chunk (16-byte vector loads
// and stores where aligned), composes their maps
// h -> a h + b, and a block-wide scan (block_scan.h) gives each its entering state. The
// state entering each chunk is saved; the backward recomputes a chunk's states from it and
// runs g_t = dh_t + a_{t+1} g_{t+1} as a reverse block scan:
//   db_t = g_t,   da_t = g_t h_{t-1},   d(initial_state) = a_0 g_0.
//
// No torch headers: `nvcc -c -arch=sm_80 linear_scan.cu` compiles this file alone.
#include "linear_scan.h"

#include <stdint.h>

#include "block_scan.h"

namespace {

using namespace hjseq_cuda;

static_assert(HJSS_THREADS == HJSEQ_SCAN_THREADS, "block size of the shared block scans");

template <typename T>
__global__ void __launch_bounds__(HJSS_THREADS) lin_fwd_kernel(HJLSParams p) {
    __shared__ Map warp_tot[kWarps];
    __shared__ float carry;
    const int64_t row_id = (int64_t)blockIdx.y * p.dim + blockIdx.x;
    const int64_t row = row_id * p.seqlen;
    const int L = p.seqlen;
    const T *a = (const T *)p.a + row, *b = (const T *)p.b + row;
    T *out = (T *)p.out + row;
    if (threadIdx.x == 0) carry = p.has_h0 ? p.h0[row_id] : 0.f;
    for (int c = 0; c < p.n_chunks; ++c) {
        __syncthreads();  // carry of the previous chunk is written
        const float h_carry = carry;
        if (threadIdx.x == 0) p.states[row_id * p.n_chunks + c] = h_carry;
        const int t0 = c * HJSS_CHUNK + threadIdx.x * HJSS_ITEMS;
        float av[HJSS_ITEMS], bv[HJSS_ITEMS];
        load_items(a, t0, L, av);
        load_items(b, t0, L, bv);
        Map mine = {1.f, 0.f};
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            if (t0 + i >= L) av[i] = 1.f;  // padding leaves the state unchanged
            mine = compose(mine, Map{av[i], bv[i]});
        }
        const Map before = block_exclusive_scan<false>(mine, warp_tot);
        float h = before.a * h_carry + before.b;
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            h = av[i] * h + bv[i];
            bv[i] = h;
        }
        store_items(out, t0, L, bv);
        if (threadIdx.x == HJSS_THREADS - 1) carry = h;
    }
    __syncthreads();
    if (threadIdx.x == 0) p.hT[row_id] = carry;
}

template <typename T>
__global__ void __launch_bounds__(HJSS_THREADS) lin_bwd_kernel(HJLSParams p) {
    __shared__ Map warp_tot[kWarps];
    __shared__ float carry;  // a_{t1} g_{t1}: gradient of the state entering the next chunk
    const int64_t row_id = (int64_t)blockIdx.y * p.dim + blockIdx.x;
    const int64_t row = row_id * p.seqlen;
    const int L = p.seqlen;
    const T *a = (const T *)p.a + row, *b = (const T *)p.b + row;
    const T *dout = (const T *)p.dout + row;
    T *da = (T *)p.da + row, *db = (T *)p.db + row;
    if (threadIdx.x == 0) carry = p.has_dhT ? p.dhT[row_id] : 0.f;
    for (int c = p.n_chunks - 1; c >= 0; --c) {
        __syncthreads();
        const float h_carry = p.states[row_id * p.n_chunks + c];
        const float r_carry = carry;
        const int t0 = c * HJSS_CHUNK + threadIdx.x * HJSS_ITEMS;
        float av[HJSS_ITEMS], bv[HJSS_ITEMS], dh[HJSS_ITEMS], h[HJSS_ITEMS];
        load_items(a, t0, L, av);
        load_items(b, t0, L, bv);
        load_items(dout, t0, L, dh);
        Map mine = {1.f, 0.f};
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            if (t0 + i >= L) av[i] = 1.f;
            mine = compose(mine, Map{av[i], bv[i]});
        }
        const Map before = block_exclusive_scan<false>(mine, warp_tot);
        const float h_in = before.a * h_carry + before.b;
        float hh = h_in;
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            hh = av[i] * hh + bv[i];
            h[i] = hh;
        }
        Map back = {1.f, 0.f};  // r -> a (dh + r), latest step first
#pragma unroll
        for (int i = HJSS_ITEMS - 1; i >= 0; --i) back = compose(back, Map{av[i], av[i] * dh[i]});
        const Map after = block_exclusive_scan<true>(back, warp_tot);
        float r = after.a * r_carry + after.b;
#pragma unroll
        for (int i = HJSS_ITEMS - 1; i >= 0; --i) {
            const float g = dh[i] + r;
            r = av[i] * g;
            dh[i] = g;                                   // db_t
            bv[i] = g * (i == 0 ? h_in : h[i - 1]);      // da_t
        }
        store_items(db, t0, L, dh);
        store_items(da, t0, L, bv);
        if (threadIdx.x == 0) carry = r;
    }
    __syncthreads();
    if (threadIdx.x == 0) p.dh0[row_id] = carry;
}

#ifndef HJSEQ_HOST_EMULATION  // tests/gpu/cuda_emulation runs the kernels on CPU threads

int launch_ls(void (*f32)(HJLSParams), void (*f16)(HJLSParams), void (*b16)(HJLSParams),
              const HJLSParams *p, cudaStream_t stream) {
    return hjseq_cuda::launch_by_dtype(f32, f16, b16, p, HJSS_THREADS, stream);
}

#endif  // HJSEQ_HOST_EMULATION

}  // namespace

#ifndef HJSEQ_HOST_EMULATION
extern "C" int hjls_forward(const HJLSParams *p, cudaStream_t stream) {
    return launch_ls(lin_fwd_kernel<float>, lin_fwd_kernel<__half>, lin_fwd_kernel<__nv_bfloat16>,
                     p, stream);
}

extern "C" int hjls_backward(const HJLSParams *p, cudaStream_t stream) {
    return launch_ls(lin_bwd_kernel<float>, lin_bwd_kernel<__half>, lin_bwd_kernel<__nv_bfloat16>,
                     p, stream);
}
#endif  // HJSEQ_HOST_EMULATION
