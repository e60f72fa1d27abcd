// CUDA selective scan, forward and backward (see hjseq/ops/selective_scan/ref.py).
//
//   h_t = exp(Δ_t A) h_{t-1} + s_t B_t u_t,   y_t = C_t·h_t + D u_t,   out = y ⊙ silu(z)
//   s = Δ (euler_b) or expm1(ΔA)/A (zoh).
//
// One block per (channel d, batch b); HJSS_THREADS threads each own HJSS_ITEMS consecutive
// steps of a chunk of HJSS_CHUNK steps. For each state index n a thread composes its
// steps' affine maps h -> a h + b, a block-wide scan of those maps (warp shuffles, then
// across warps) gives each thread its entering state, and the chunk's carry flows to the
// next chunk. exp(ΔA) is exp2f(Δ · A·log2 e). The state entering each chunk is saved;
// the backward recomputes a chunk's states from it and runs the co-state recurrence
// g_t = C_t dy_t + a_{t+1} g_{t+1} as a reverse block scan (no (B, D, L, N) storage).
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
__device__ __forceinline__ void step_factors(float delta, float A, bool zoh, float &a, float &s) {
    a = exp2f(delta * (A * kLog2e));
    s = zoh ? delta * expm1_over_x(delta * A) : delta;
}

template <typename T>
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
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            const int t = t0 + i;
            uv[i] = t < L ? to_f(u[t]) : 0.f;
            float x = t < L ? to_f(dl[t]) + bias : 0.f;
            dv[i] = p.delta_softplus ? softplus(x) : x;
            y[i] = 0.f;
        }
        for (int n = 0; n < N; ++n) {
            __syncthreads();  // carry[n] of the previous chunk is written
            const float A = p.A[(int64_t)d * N + n];
            const float h_carry = carry[n];
            if (threadIdx.x == 0)
                p.states[(((int64_t)b * p.dim + d) * p.n_chunks + c) * N + n] = h_carry;
            float a[HJSS_ITEMS], bb[HJSS_ITEMS];
            Map mine = {1.f, 0.f};
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) {
                const int t = t0 + i;
                float s;
                step_factors(dv[i], A, p.zoh, a[i], s);
                bb[i] = t < L ? s * to_f(Bp[(int64_t)n * L + t]) * uv[i] : 0.f;
                if (t >= L) a[i] = 1.f;
                mine = compose(mine, Map{a[i], bb[i]});
            }
            const Map before = block_exclusive_scan<false>(mine, warp_tot);
            float h = before.a * h_carry + before.b;
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) {
                const int t = t0 + i;
                h = a[i] * h + bb[i];
                if (t < L) y[i] += h * to_f(Cp[(int64_t)n * L + t]);
            }
            if (threadIdx.x == HJSS_THREADS - 1) carry[n] = h;
        }
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            const int t = t0 + i;
            if (t >= L) continue;
            float yi = y[i] + Dd * uv[i];
            if (p.has_z) {
                ((T *)p.ypre)[row + t] = from_f<T>(yi);
                const float zt = to_f(((const T *)p.z)[row + t]);
                yi *= zt / (1.f + expf(-zt));
            }
            ((T *)p.out)[row + t] = from_f<T>(yi);
        }
    }
    __syncthreads();
    for (int n = threadIdx.x; n < N; n += HJSS_THREADS) p.hT[st + n] = carry[n];
}

template <typename T>
__global__ void __launch_bounds__(HJSS_THREADS) bwd_kernel(HJSSParams p) {
    __shared__ Map warp_tot[kWarps];
    __shared__ float scratch[kWarps];
    __shared__ float carry[HJSS_MAX_N];  // a_{t1} g_{t1}: gradient of the state entering the next chunk
    __shared__ float dA_acc[HJSS_MAX_N];
    const int d = blockIdx.x, b = blockIdx.y, L = p.seqlen, N = p.dstate;
    const int g = d / (p.dim / p.n_groups);
    const int64_t row = ((int64_t)b * p.dim + d) * L;
    const int64_t bc_row = ((int64_t)b * p.n_groups + g) * N * (int64_t)L;
    const T *u = (const T *)p.u + row, *dl = (const T *)p.delta + row;
    const T *Bp = (const T *)p.B + bc_row, *Cp = (const T *)p.C + bc_row;
    const T *dout = (const T *)p.dout + row;
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
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            const int t = t0 + i;
            const bool ok = t < L;
            uv[i] = ok ? to_f(u[t]) : 0.f;
            pre[i] = ok ? to_f(dl[t]) + bias : 0.f;
            dv[i] = p.delta_softplus ? softplus(pre[i]) : pre[i];
            float go = ok ? to_f(dout[t]) : 0.f;
            if (p.has_z && ok) {
                const float zt = to_f(((const T *)p.z)[row + t]);
                const float sz = 1.f / (1.f + expf(-zt));
                const float yp = to_f(((const T *)p.ypre)[row + t]);
                ((T *)p.dz)[row + t] = from_f<T>(go * yp * sz * (1.f + zt * (1.f - sz)));
                go *= zt * sz;
            }
            dy[i] = go;
            du[i] = Dd * go;
            ddelta[i] = 0.f;
            dD_thread += go * uv[i];
        }
        for (int n = 0; n < N; ++n) {
            __syncthreads();  // carry[n] of the later chunk is written
            const float A = p.A[(int64_t)d * N + n];
            const float h_carry = p.states[(((int64_t)b * p.dim + d) * p.n_chunks + c) * N + n];
            const float r_carry = carry[n];
            float a[HJSS_ITEMS], s[HJSS_ITEMS], Bv[HJSS_ITEMS], Cv[HJSS_ITEMS], h[HJSS_ITEMS];
            Map mine = {1.f, 0.f};
#pragma unroll
            for (int i = 0; i < HJSS_ITEMS; ++i) {
                const int t = t0 + i;
                const bool ok = t < L;
                step_factors(dv[i], A, p.zoh, a[i], s[i]);
                Bv[i] = ok ? to_f(Bp[(int64_t)n * L + t]) : 0.f;
                Cv[i] = ok ? to_f(Cp[(int64_t)n * L + t]) : 0.f;
                if (!ok) a[i] = 1.f;
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
                const int t = t0 + i;
                const float gi = dy[i] * Cv[i] + r;  // co-state g_t
                r = a[i] * gi;
                if (t >= L) continue;
                const float h_prev = i == 0 ? h_in : h[i - 1];
                atomicAdd(dC + (int64_t)n * L + t, dy[i] * h[i]);
                atomicAdd(dB + (int64_t)n * L + t, gi * s[i] * uv[i]);
                du[i] += gi * s[i] * Bv[i];
                const float ga = gi * h_prev * a[i];  // g_t ∂h_t/∂(ΔA)
                const float gbu = gi * Bv[i] * uv[i];  // g_t ∂h_t/∂s
                ddelta[i] += ga * A + gbu * (p.zoh ? a[i] : 1.f);
                dA_thread += ga * dv[i];
                if (p.zoh) dA_thread += gbu * dv[i] * dv[i] * dexpm1_over_x(dv[i] * A);
            }
            if (threadIdx.x == 0) carry[n] = r;
            const float dA_blk = block_sum(dA_thread, scratch);
            if (threadIdx.x == 0) dA_acc[n] += dA_blk;
        }
#pragma unroll
        for (int i = 0; i < HJSS_ITEMS; ++i) {
            const int t = t0 + i;
            if (t >= L) continue;
            const float dd = p.delta_softplus ? ddelta[i] * dsoftplus(pre[i]) : ddelta[i];
            dbias_thread += dd;
            ((T *)p.du)[row + t] = from_f<T>(du[i]);
            ((T *)p.ddelta)[row + t] = from_f<T>(dd);
        }
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
    return launch(fwd_kernel<float>, fwd_kernel<__half>, fwd_kernel<__nv_bfloat16>, p, stream);
}

extern "C" int hjss_backward(const HJSSParams *p, cudaStream_t stream) {
    return launch(bwd_kernel<float>, bwd_kernel<__half>, bwd_kernel<__nv_bfloat16>, p, stream);
}
#endif  // HJSEQ_HOST_EMULATION
