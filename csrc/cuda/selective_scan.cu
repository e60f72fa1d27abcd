// CUDA selective scan, forward and backward (see hjseq/ops/selective_scan/ref.py).
//
//   h_t = exp(Δ_t A) h_{t-1} + s_t B_t u_t,   y_t = C_t·h_t + D u_t,   out = y ⊙ silu(z)
//   s = Δ (euler_b) or expm1(ΔA)/A (zoh).
//
// One block per (channel d, batch b); HJSS_THREADS threads each own HJSS_ITEMS (16)
// consecutive steps of a chunk of HJSS_CHUNK steps, read and written with 16-byte vector
// accesses where aligned (load_items/store_items in block_scan.h). For each state index n a thread composes its
// steps' affine maps h -> a h + b, a block-wide scan of those maps (warp shuffles, then
// across warps) gives each thread its entering state, and the chunk's carry flows to the
// next chunk. exp(ΔA) is exp2f(Δ · A·log2 e). The state entering each chunk is saved;
// the backward recomputes a chunk's states from it and runs the co-state recurrence
// g_t = C_t dy_t + a_{t+1} g_{t+1} as a reverse block scan (no (B, D, L, N) storage).
// dB_t and dC_t (summed over the group's channels with float atomics) are first exchanged
// through shared memory from blocked to striped order, so a warp's atomics are contiguous.
// zoh and has_z are template parameters (four instances per dtype); D, delta_bias and
// softplus stay uniform runtime branches.
//
// No torch headers: `nvcc -c -arch=sm_80 selective_scan.cu` compiles this file alone.
// With HJSEQ_HOST_EMULATION defined (after an emulation header), the kernels compile as host
// C++ so tests can run them on CPU threads; the launchers are left out.
#include "selective_scan.h"

#include <stdint.h>

#include "block_scan.h"

namespace {

using namespace hjseq_cuda;

static_assert(HJSS_THREADS == HJSEQ_SCAN_THREADS, "block size of the shared block scans");
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float softplus(float x) { return x <= 20.f ? log1pf(expf(x)) : x; }
__device__ __forceinline__ float dsoftplus(float x) { return x <= 20.f ? 1.f / (1.f + expf(-x)) : 1.f; }

// expm1(x)/x (-> 1 at 0) and its derivative (x e^x - expm1 x)/x^2 (-> 1/2), series near 0.
__device__ __forceinline__ float expm1_over_x(float x) {
    return fabsf(x) < 1e-3f ? 1.f + x * (0.5f + x * (1.f / 6.f)) : expm1f(x) / x;
}
__device__ __forceinline__ float dexpm1_over_x(float x) {
    if (fabsf(x) < 0.1f) return 0.5f + x * (1.f / 3.f + x * (1.f / 8.f + x * (1.f / 30.f + x * (1.f / 144.f))));
    return (x * expf(x) - expm1f(x)) / (x * x);
}

// Discretization of one step: a = exp(ΔA) (by exp2f on A·log2 e) and the B scale s.
template <bool kZoh>
__device__ __forceinline__ void step_factors(float delta, float A, float &a, float &s) {
    a = exp2f(delta * (A * kLog2e));
    s = kZoh ? delta * expm1_over_x(delta * A) : delta;
}

template <typename T, bool kZoh, bool kHasZ>
__global__ void __launch_bounds__(HJSS_THREADS) fwd_kernel(HJSSParams p) {
    __shared__ Map warp_tot[kWarps];
    __shared__ float carry[HJSS_MAX_N];
    const int d = blockIdx.x, b = blockIdx.y, L = p.seqlen, N = p.dstate;
    const int g = d / (p.dim / p.n_groups);
    const int64_t row = ((int64_t)b * p.dim + d) * L;
    const int64_t bc_row = ((int64_t)b * p.n_groups + g) * N * (int64_t)L;
    const T *u = (const T *)p.u + row, *dl = (const T *)p.delta + row;
    const T *Bp = (const T *)p.B + bc_row, *Cp = (const T *)p.C + bc_row;
    const int64_t st = ((int64_t)b * p.dim + d) * N;  // (B, D, N) offset
    for (int n = threadIdx.x; n < N; n += HJSS_THREADS)
        carry[n] = p.has_h0 ? p.h0[st + n] : 0.f;
    const float Dd = p.has_D ? p.D[d] : 0.f, bias = p.has_bias ? p.bias[d] : 0.f;
    for (int c = 0; c < p.n_chunks; ++c) {
        const int t0 = c * HJSS_CHUNK + threadIdx.x * HJSS_ITEMS;
        float uv[HJSS_ITEMS], dv[HJSS_ITEMS], y[HJSS_ITEMS];
        load_items(u, t0, L, uv);
        load_items(dl, t0, L, dv);
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            const float x = t0 + i < L ? dv[i] + bias : 0.f;
            dv[i] = p.delta_softplus ? softplus(x) : x;
            y[i] = 0.f;
        }
        for (int n = 0; n < N; ++n) {
            __syncthreads();  // carry[n] of the previous chunk is written
            const float A = p.A[(int64_t)d * N + n];
            const float h_carry = carry[n];
            if (threadIdx.x == 0)
                p.states[(((int64_t)b * p.dim + d) * p.n_chunks + c) * N + n] = h_carry;
            float a[HJSS_ITEMS], bb[HJSS_ITEMS], Cv[HJSS_ITEMS];
            load_items(Bp + (int64_t)n * L, t0, L, bb);
            load_items(Cp + (int64_t)n * L, t0, L, Cv);
            Map mine = {1.f, 0.f};
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) {
                float s;
                step_factors<kZoh>(dv[i], A, a[i], s);
                bb[i] *= s * uv[i];  // 0 past L: B and u load as 0 there
                if (t0 + i >= L) a[i] = 1.f;
                mine = compose(mine, Map{a[i], bb[i]});
            }
            const Map before = block_exclusive_scan<false>(mine, warp_tot);
            float h = before.a * h_carry + before.b;
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) {
                h = a[i] * h + bb[i];
                y[i] += h * Cv[i];
            }
            if (threadIdx.x == HJSS_THREADS - 1) carry[n] = h;
        }
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) y[i] += Dd * uv[i];
        if constexpr (kHasZ) {
            store_items((T *)p.ypre + row, t0, L, y);
            float zv[HJSS_ITEMS];
            load_items((const T *)p.z + row, t0, L, zv);
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) y[i] *= zv[i] / (1.f + expf(-zv[i]));
        }
        store_items((T *)p.out + row, t0, L, y);
    }
    __syncthreads();
    for (int n = threadIdx.x; n < N; n += HJSS_THREADS) p.hT[st + n] = carry[n];
}

// Shared-memory slot of step k of a chunk, padded by one float per 32 so that both the
// blocked writes (thread i, item j -> k = i*ITEMS + j) and the striped reads are free of
// bank conflicts.
__device__ __forceinline__ int xch_slot(int k) { return k + (k >> 5); }
constexpr int kXchSize = HJSS_CHUNK + HJSS_CHUNK / 32;

template <typename T, bool kZoh, bool kHasZ>
__global__ void __launch_bounds__(HJSS_THREADS) bwd_kernel(HJSSParams p) {
    __shared__ Map warp_tot[kWarps];
    __shared__ float scratch[kWarps];
    __shared__ float carry[HJSS_MAX_N];  // a_{t1} g_{t1}: gradient of the state entering the next chunk
    __shared__ float dA_acc[HJSS_MAX_N];
    // dB_t, dC_t of this channel, exchanged blocked -> striped before the atomics, so that a
    // warp's 32 atomics hit 32 consecutive floats (4 sectors) instead of 32 sectors
    __shared__ float xch_B[kXchSize], xch_C[kXchSize];
    const int d = blockIdx.x, b = blockIdx.y, L = p.seqlen, N = p.dstate;
    const int g = d / (p.dim / p.n_groups);
    const int64_t row = ((int64_t)b * p.dim + d) * L;
    const int64_t bc_row = ((int64_t)b * p.n_groups + g) * N * (int64_t)L;
    const T *u = (const T *)p.u + row, *dl = (const T *)p.delta + row;
    const T *Bp = (const T *)p.B + bc_row, *Cp = (const T *)p.C + bc_row;
    float *dB = p.dB + bc_row, *dC = p.dC + bc_row;
    const int64_t st = ((int64_t)b * p.dim + d) * N;
    for (int n = threadIdx.x; n < N; n += HJSS_THREADS) {
        carry[n] = p.has_dhT ? p.dhT[st + n] : 0.f;
        dA_acc[n] = 0.f;
    }
    const float Dd = p.has_D ? p.D[d] : 0.f, bias = p.has_bias ? p.bias[d] : 0.f;
    float dD_thread = 0.f, dbias_thread = 0.f;
    for (int c = p.n_chunks - 1; c >= 0; --c) {
        const int t0 = c * HJSS_CHUNK + threadIdx.x * HJSS_ITEMS;
        float uv[HJSS_ITEMS], pre[HJSS_ITEMS], dv[HJSS_ITEMS], dy[HJSS_ITEMS];
        float du[HJSS_ITEMS], ddelta[HJSS_ITEMS];
        load_items(u, t0, L, uv);
        load_items(dl, t0, L, pre);
        load_items((const T *)p.dout + row, t0, L, dy);
        if constexpr (kHasZ) {
            float zv[HJSS_ITEMS], yp[HJSS_ITEMS];
            load_items((const T *)p.z + row, t0, L, zv);
            load_items((const T *)p.ypre + row, t0, L, yp);
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) {
                const float sz = 1.f / (1.f + expf(-zv[i]));
                yp[i] = dy[i] * yp[i] * sz * (1.f + zv[i] * (1.f - sz));  // dz
                dy[i] *= zv[i] * sz;
            }
            store_items((T *)p.dz + row, t0, L, yp);
        }
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            pre[i] = t0 + i < L ? pre[i] + bias : 0.f;
            dv[i] = p.delta_softplus ? softplus(pre[i]) : pre[i];
            du[i] = Dd * dy[i];
            ddelta[i] = 0.f;
            dD_thread += dy[i] * uv[i];
        }
        for (int n = 0; n < N; ++n) {
            __syncthreads();  // carry[n] of the later chunk is written; xch_* are free
            const float A = p.A[(int64_t)d * N + n];
            const float h_carry = p.states[(((int64_t)b * p.dim + d) * p.n_chunks + c) * N + n];
            const float r_carry = carry[n];
            float a[HJSS_ITEMS], s[HJSS_ITEMS], Bv[HJSS_ITEMS], Cv[HJSS_ITEMS], h[HJSS_ITEMS];
            load_items(Bp + (int64_t)n * L, t0, L, Bv);
            load_items(Cp + (int64_t)n * L, t0, L, Cv);
            Map mine = {1.f, 0.f};
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) {
                step_factors<kZoh>(dv[i], A, a[i], s[i]);
                if (t0 + i >= L) a[i] = 1.f;
                mine = compose(mine, Map{a[i], s[i] * Bv[i] * uv[i]});
            }
            const Map before = block_exclusive_scan<false>(mine, warp_tot);
            const float h_in = before.a * h_carry + before.b;
            float hh = h_in;
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) {
                hh = a[i] * hh + s[i] * Bv[i] * uv[i];
                h[i] = hh;
            }
            // reverse: r -> a (c + r) per step, latest step first
            Map back = {1.f, 0.f};
#pragma unroll
            for (int i = HJSS_ITEMS - 1; i >= 0; --i) back = compose(back, Map{a[i], a[i] * dy[i] * Cv[i]});
            const Map after = block_exclusive_scan<true>(back, warp_tot);
            float r = after.a * r_carry + after.b;
            float dA_thread = 0.f;
#pragma unroll
            for (int i = HJSS_ITEMS - 1; i >= 0; --i) {
                const float gi = dy[i] * Cv[i] + r;  // co-state g_t (0 contributions past L)
                r = a[i] * gi;
                if (t0 + i >= L) continue;  // padding: nothing to accumulate
                const float h_prev = i == 0 ? h_in : h[i - 1];
                const int k = threadIdx.x * HJSS_ITEMS + i;
                xch_C[xch_slot(k)] = dy[i] * h[i];
                xch_B[xch_slot(k)] = gi * s[i] * uv[i];
                du[i] += gi * s[i] * Bv[i];
                const float ga = gi * h_prev * a[i];  // g_t ∂h_t/∂(ΔA)
                const float gbu = gi * Bv[i] * uv[i];  // g_t ∂h_t/∂s
                ddelta[i] += ga * A + gbu * (kZoh ? a[i] : 1.f);
                dA_thread += ga * dv[i];
                if constexpr (kZoh) dA_thread += gbu * dv[i] * dv[i] * dexpm1_over_x(dv[i] * A);
            }
            if (threadIdx.x == 0) carry[n] = r;
            __syncthreads();  // xch_* written
#pragma unroll 4
            for (int j = 0; j < HJSS_ITEMS; ++j) {
                const int k = j * HJSS_THREADS + threadIdx.x;
                const int t = c * HJSS_CHUNK + k;
                if (t < L) {
                    atomicAdd(dC + (int64_t)n * L + t, xch_C[xch_slot(k)]);
                    atomicAdd(dB + (int64_t)n * L + t, xch_B[xch_slot(k)]);
                }
            }
            const float dA_blk = block_sum(dA_thread, scratch);  // syncs: xch_* read
            if (threadIdx.x == 0) dA_acc[n] += dA_blk;
        }
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            const float dd = p.delta_softplus ? ddelta[i] * dsoftplus(pre[i]) : ddelta[i];
            ddelta[i] = t0 + i < L ? dd : 0.f;
            dbias_thread += ddelta[i];
        }
        store_items((T *)p.du + row, t0, L, du);
        store_items((T *)p.ddelta + row, t0, L, ddelta);
    }
    const float dD_blk = block_sum(dD_thread, scratch);
    const float dbias_blk = block_sum(dbias_thread, scratch);
    if (threadIdx.x == 0) {
        p.dD_part[(int64_t)b * p.dim + d] = dD_blk;
        p.dbias_part[(int64_t)b * p.dim + d] = dbias_blk;
    }
    __syncthreads();
    for (int n = threadIdx.x; n < N; n += HJSS_THREADS) {
        p.dh0[st + n] = carry[n];
        p.dA_part[st + n] = dA_acc[n];
    }
}

// The kernel instance for the params' compile-time flags (zoh, has_z) and dtype T.
template <typename T>
void (*pick_fwd(const HJSSParams &p))(HJSSParams) {
    if (p.zoh) return p.has_z ? fwd_kernel<T, true, true> : fwd_kernel<T, true, false>;
    return p.has_z ? fwd_kernel<T, false, true> : fwd_kernel<T, false, false>;
}
template <typename T>
void (*pick_bwd(const HJSSParams &p))(HJSSParams) {
    if (p.zoh) return p.has_z ? bwd_kernel<T, true, true> : bwd_kernel<T, true, false>;
    return p.has_z ? bwd_kernel<T, false, true> : bwd_kernel<T, false, false>;
}

#ifndef HJSEQ_HOST_EMULATION  // tests/gpu/cuda_emulation runs the kernels above on CPU threads

int launch(void (*f32)(HJSSParams), void (*f16)(HJSSParams), void (*b16)(HJSSParams),
           const HJSSParams *p, cudaStream_t stream) {
    if (p->dstate > HJSS_MAX_N || p->dstate < 1 || p->n_groups < 1 || p->dim % p->n_groups)
        return (int)cudaErrorInvalidValue;
    return hjseq_cuda::launch_by_dtype(f32, f16, b16, p, HJSS_THREADS, stream);
}

#endif  // HJSEQ_HOST_EMULATION

}  // namespace

#ifndef HJSEQ_HOST_EMULATION
extern "C" int hjss_forward(const HJSSParams *p, cudaStream_t stream) {
    return launch(pick_fwd<float>(*p), pick_fwd<__half>(*p), pick_fwd<__nv_bfloat16>(*p), p,
                  stream);
}

extern "C" int hjss_backward(const HJSSParams *p, cudaStream_t stream) {
    return launch(pick_bwd<float>(*p), pick_bwd<__half>(*p), pick_bwd<__nv_bfloat16>(*p), p,
                  stream);
}
#endif  // HJSEQ_HOST_EMULATION
