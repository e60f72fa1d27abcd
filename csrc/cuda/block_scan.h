// Device helpers shared by the CUDA scan kernels (plain CUDA, no torch headers; include
// only from .cu files, named .h so that the extension build hash covers it): dtype
// conversions, 16-byte vectorized row loads/stores, the affine map h -> a h + b and its
// composition, block-wide exclusive scans of such maps (forward or reverse) and a block sum. Kernels using them run blocks of
// HJSEQ_SCAN_THREADS threads.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "selective_scan.h"  // dtype codes HJSS_F32/F16/BF16 (plain C, no torch)

#ifndef HJSEQ_SCAN_THREADS
#define HJSEQ_SCAN_THREADS 128
#endif

namespace hjseq_cuda {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarps = HJSEQ_SCAN_THREADS / 32;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// The affine map h -> a h + b. compose(first, then) applies `first`, then `then`.
struct Map {
    float a, b;
};
__device__ __forceinline__ Map compose(Map first, Map then) {
    return {first.a * then.a, then.a * first.b + then.b};
}

// Composition of the maps of all threads before this one in scan order (identity for the
// first). REVERSE scans from the last thread to the first. `warp_tot` holds kWarps maps.
template <bool REVERSE>
__device__ Map block_exclusive_scan(Map v, Map *warp_tot) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    Map inc = v;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        float pa = REVERSE ? __shfl_down_sync(kFull, inc.a, off) : __shfl_up_sync(kFull, inc.a, off);
        float pb = REVERSE ? __shfl_down_sync(kFull, inc.b, off) : __shfl_up_sync(kFull, inc.b, off);
        bool has = REVERSE ? (lane + off < 32) : (lane >= off);
        if (has) inc = compose(Map{pa, pb}, inc);
    }
    float ea = REVERSE ? __shfl_down_sync(kFull, inc.a, 1) : __shfl_up_sync(kFull, inc.a, 1);
    float eb = REVERSE ? __shfl_down_sync(kFull, inc.b, 1) : __shfl_up_sync(kFull, inc.b, 1);
    const bool first_lane = REVERSE ? (lane == 31) : (lane == 0);
    Map exc = first_lane ? Map{1.f, 0.f} : Map{ea, eb};
    if (lane == (REVERSE ? 0 : 31)) warp_tot[warp] = inc;
    __syncthreads();
    Map before = {1.f, 0.f};
    if (REVERSE) {
        for (int w = kWarps - 1; w > warp; --w) before = compose(before, warp_tot[w]);
    } else {
        for (int w = 0; w < warp; ++w) before = compose(before, warp_tot[w]);
    }
    __syncthreads();  // warp_tot may be reused by the next scan
    return compose(before, exc);
}

// Items t0 .. t0+K-1 of a row of T as floats (0 past L): K*sizeof(T)/16 16-byte vector
// loads when the run lies inside the row and is 16-byte aligned, else element by element.
template <typename T, int K>
__device__ __forceinline__ void load_items(const T *row, int t0, int L, float (&out)[K]) {
    constexpr int kPerVec = 16 / sizeof(T);
    static_assert(K % kPerVec == 0, "items per thread must fill whole 16-byte vectors");
    if (t0 + K <= L && (reinterpret_cast<uintptr_t>(row + t0) & 15) == 0) {
#pragma unroll
        for (int v = 0; v < K / kPerVec; ++v) {
            const uint4 raw = reinterpret_cast<const uint4 *>(row + t0)[v];
            const T *e = reinterpret_cast<const T *>(&raw);
#pragma unroll
            for (int j = 0; j < kPerVec; ++j) out[v * kPerVec + j] = to_f(e[j]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) out[i] = t0 + i < L ? to_f(row[t0 + i]) : 0.f;
    }
}

// Store items t0 .. t0+K-1 (those before L) of a row of T, vectorized like load_items.
template <typename T, int K>
__device__ __forceinline__ void store_items(T *row, int t0, int L, const float (&v)[K]) {
    constexpr int kPerVec = 16 / sizeof(T);
    static_assert(K % kPerVec == 0, "items per thread must fill whole 16-byte vectors");
    if (t0 + K <= L && (reinterpret_cast<uintptr_t>(row + t0) & 15) == 0) {
#pragma unroll
        for (int w = 0; w < K / kPerVec; ++w) {
            uint4 raw;
            T *e = reinterpret_cast<T *>(&raw);
#pragma unroll
            for (int j = 0; j < kPerVec; ++j) e[j] = from_f<T>(v[w * kPerVec + j]);
            reinterpret_cast<uint4 *>(row + t0)[w] = raw;
        }
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i)
            if (t0 + i < L) row[t0 + i] = from_f<T>(v[i]);
    }
}

// Sum over the block; the result is valid in thread 0.
__device__ float block_sum(float v, float *scratch) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFull, v, off);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float s = 0.f;
    if (threadIdx.x == 0)
        for (int w = 0; w < kWarps; ++w) s += scratch[w];
    __syncthreads();
    return s;
}

#ifndef HJSEQ_HOST_EMULATION
// Launch the float/half/bfloat16 instance of a kernel by the params' dtype code, one block
// of `threads` per (channel, batch): grid (dim, batch). Params need `batch`, `dim`, `dtype`.
template <typename Params>
int launch_by_dtype(void (*f32)(Params), void (*f16)(Params), void (*b16)(Params),
                    const Params *p, int threads, cudaStream_t stream) {
    if (p->batch == 0 || p->dim == 0) return 0;
    if (p->batch > 65535) return (int)cudaErrorInvalidValue;  // gridDim.y limit
    dim3 grid(p->dim, p->batch), block(threads);
    switch (p->dtype) {
        case HJSS_F32: f32<<<grid, block, 0, stream>>>(*p); break;
        case HJSS_F16: f16<<<grid, block, 0, stream>>>(*p); break;
        case HJSS_BF16: b16<<<grid, block, 0, stream>>>(*p); break;
        default: return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}
#endif  // HJSEQ_HOST_EMULATION

}  // namespace hjseq_cuda
