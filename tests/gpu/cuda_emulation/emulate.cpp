// Host emulation of csrc/cuda/selective_scan.cu and linear_scan.cu, for tests on machines without a GPU.
//
// The kernel sources are compiled as plain C++ (HJSEQ_HOST_EMULATION leaves out their CUDA
// launchers). Each CUDA thread of a block is a std::thread; __syncthreads is a
// std::barrier over the block; a warp shuffle is a barrier-fenced exchange through a
// block-wide buffer (every thread of the block reaches the kernels' shuffles together);
// atomicAdd takes a mutex and counts the calls per 32-thread warp and 32-byte sector (so
// tests can check that the atomics of a warp are coalesced); __shared__ arrays are function statics, shared by the block's
// threads because blocks run one after another. This checks the kernels' indexing, scans,
// chunk carries and gradients exactly as written, not CUDA's performance or memory model.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <barrier>
#include <map>
#include <set>
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
namespace hjemu {
// (warp of the block, call index within that warp's thread) -> sectors touched
inline std::map<std::pair<int, long>, std::set<uintptr_t>> atomic_sectors;
inline thread_local long atomic_calls = 0;
}  // namespace hjemu
inline float atomicAdd(float *p, float v) {
    std::lock_guard<std::mutex> g(hjemu::atomic_mu);
    const float old = *p;
    *p = old + v;
    const int warp = (int)(threadIdx.x >> 5) + 64 * (int)(blockIdx.x + 4096 * blockIdx.y);
    hjemu::atomic_sectors[{warp, hjemu::atomic_calls++}].insert(reinterpret_cast<uintptr_t>(p) >> 5);
    return old;
}

#define HJSEQ_HOST_EMULATION
#include "cuda/selective_scan.cu"
#include "cuda/linear_scan.cu"

namespace {
template <typename P>
void run_grid(void (*kernel)(P), const P &p) {
    hjemu::atomic_sectors.clear();
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

// The same kernel instance (dtype, zoh, has_z) the CUDA launcher picks.
extern "C" int emu_forward(const HJSSParams *p) {
    switch (p->dtype) {
        case HJSS_F32: run_grid(pick_fwd<float>(*p), *p); return 0;
        case HJSS_F16: run_grid(pick_fwd<__half>(*p), *p); return 0;
        case HJSS_BF16: run_grid(pick_fwd<__nv_bfloat16>(*p), *p); return 0;
        default: return 1;
    }
}

extern "C" int emu_backward(const HJSSParams *p) {
    switch (p->dtype) {
        case HJSS_F32: run_grid(pick_bwd<float>(*p), *p); return 0;
        case HJSS_F16: run_grid(pick_bwd<__half>(*p), *p); return 0;
        case HJSS_BF16: run_grid(pick_bwd<__nv_bfloat16>(*p), *p); return 0;
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

// Mean number of distinct 32-byte sectors per warp-wide atomicAdd of the last launch
// (1 warp instruction = the k-th call of each of its 32 threads); 0 without atomics.
extern "C" double emu_atomic_sectors_per_warp_op() {
    if (hjemu::atomic_sectors.empty()) return 0.0;
    double total = 0;
    for (const auto &kv : hjemu::atomic_sectors) total += kv.second.size();
    return total / hjemu::atomic_sectors.size();
}
