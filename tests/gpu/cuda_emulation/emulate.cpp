// Host emulation of csrc/cuda/selective_scan.cu and linear_scan.cu, for tests on machines without a GPU.
//
// The kernel sources are compiled as plain C++ (HJSEQ_HOST_EMULATION leaves out their CUDA
// launchers). Each CUDA thread of a block is a std::thread; __syncthreads is a
// std::barrier over the block; a warp shuffle is a barrier-fenced exchange through a
// block-wide buffer (every thread of the block reaches the kernels' shuffles together);
// atomicAdd takes a mutex; __shared__ arrays are function statics, shared by the block's
// threads because blocks run one after another. This checks the kernels' indexing, scans,
// chunk carries and gradients exactly as written, not CUDA's performance or memory model.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <barrier>
#include <cmath>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

struct EmuIdx {
    unsigned x, y, z;
};

namespace hjemu {
inline thread_local EmuIdx tid{0, 0, 0};
inline EmuIdx bid{0, 0, 0};
inline std::barrier<> *bar = nullptr;
inline float xbuf[1024];
inline std::mutex atomic_mu;
}  // namespace hjemu

#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)
#define threadIdx (hjemu::tid)
#define blockIdx (hjemu::bid)

inline void __syncthreads() { hjemu::bar->arrive_and_wait(); }

// Value of thread `src` (or this thread's own value when src < 0), exchanged block-wide.
inline float emu_exchange(float v, int src) {
    hjemu::xbuf[threadIdx.x] = v;
    __syncthreads();
    const float r = src >= 0 ? hjemu::xbuf[src] : v;
    __syncthreads();
    return r;
}
inline float __shfl_up_sync(unsigned, float v, int d) {
    const int lane = threadIdx.x & 31;
    return emu_exchange(v, lane >= d ? (int)threadIdx.x - d : -1);
}
inline float __shfl_down_sync(unsigned, float v, int d) {
    const int lane = threadIdx.x & 31;
    return emu_exchange(v, lane + d < 32 ? (int)threadIdx.x + d : -1);
}
inline float atomicAdd(float *p, float v) {
    std::lock_guard<std::mutex> g(hjemu::atomic_mu);
    const float old = *p;
    *p = old + v;
    return old;
}

#define HJSEQ_HOST_EMULATION
#include "cuda/selective_scan.cu"
#include "cuda/linear_scan.cu"

namespace {
template <typename P>
void run_grid(void (*kernel)(P), const P &p) {
    for (int b = 0; b < p.batch; ++b) {
        for (int d = 0; d < p.dim; ++d) {
            hjemu::bid = {(unsigned)d, (unsigned)b, 0};
            std::barrier<> bar(HJSS_THREADS);
            hjemu::bar = &bar;
            std::vector<std::thread> threads;
            for (int t = 0; t < HJSS_THREADS; ++t)
                threads.emplace_back([&, t] {
                    hjemu::tid = {(unsigned)t, 0, 0};
                    kernel(p);
                });
            for (auto &th : threads) th.join();
        }
    }
}
}  // namespace

extern "C" int emu_forward(const HJSSParams *p) {
    switch (p->dtype) {
        case HJSS_F32: run_grid(fwd_kernel<float>, *p); return 0;
        case HJSS_BF16: run_grid(fwd_kernel<__nv_bfloat16>, *p); return 0;
        default: return 1;
    }
}

extern "C" int emu_backward(const HJSSParams *p) {
    switch (p->dtype) {
        case HJSS_F32: run_grid(bwd_kernel<float>, *p); return 0;
        case HJSS_BF16: run_grid(bwd_kernel<__nv_bfloat16>, *p); return 0;
        default: return 1;
    }
}

extern "C" int emu_linear_forward(const HJLSParams *p) {
    switch (p->dtype) {
        case HJSS_F32: run_grid(lin_fwd_kernel<float>, *p); return 0;
        case HJSS_BF16: run_grid(lin_fwd_kernel<__nv_bfloat16>, *p); return 0;
        default: return 1;
    }
}

extern "C" int emu_linear_backward(const HJLSParams *p) {
    switch (p->dtype) {
        case HJSS_F32: run_grid(lin_bwd_kernel<float>, *p); return 0;
        case HJSS_BF16: run_grid(lin_bwd_kernel<__nv_bfloat16>, *p); return 0;
        default: return 1;
    }
}
