// ssd_scan on the CPU: Mamba-2's chunked matrix-state scan (definition: hjseq/ops/ssd/ref.py)
//
//   S_t = exp(ld_t) S_{t-1} + x_t B_t^T  (S: p x n per head),   y_t = S_t C_t
//
// Each sequence is cut into chunks of at most Q tokens (chunks never straddle a packed
// sequence start). Inside a chunk of T tokens, with the segment decays
//   L[t][s] = exp(ld_{s+1} + ... + ld_t) (s <= t, else 0),  ds_t = exp(ld_0 + ... + ld_t),
//   de_s = L[T-1][s],  dtot = ds_{T-1}:
//   Y     = (L o C B^T) X + diag(ds) C S_in^T                    (intra + inter, matmuls)
//   S_out = dtot S_in + X^T diag(de) B                           (state passing)
// Three phases: (1) every (chunk, head) computes its local state X^T diag(de) B in
// parallel; (2) a short sequential pass per (sequence, head) turns them into the states
// entering each chunk (kept for the backward); (3) every (chunk, group) computes Y, with
// C B^T shared by the heads of the group. The backward mirrors it (adjoint states passed
// backwards in phase 2). forward_keep_cb also returns every chunk's C B^T (nc, g, Q, Q),
// which the backward then reads instead of recomputing (the autograd wrapper asks for it
// only when a backward will run). Segment sums restart at a -inf (reset), so L stays exact
// (no -inf - -inf). Kernels run in float (double for double inputs); the Python wrapper
// casts.
//
// Layouts (contiguous): x, y (b, l, h, p); ld (b, l, h); B, C (b, l, g, n); states per
// chunk and per sequence stored transposed, (.., h, n, p), so the matmuls stream rows.
#include "block_cache.h"
#include "common.h"

#include <algorithm>
#include <array>
#include <memory>
#include <vector>

namespace {

// One chunk of the state passing, in either direction: the chunk's slot sc (its local
// contribution) receives the state entering it, and the carry moves past it:
// sc <- carry, carry <- a * carry + sc_local.
template <typename T>
inline void pass_state(T* sc, T* carry, T a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T loc = sc[i];
    sc[i] = carry[i];
    carry[i] = a * carry[i] + loc;
  }
}

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / sizeof(T);
};

enum Tri { kFull = 0, kLower = 1, kUpper = 2 };  // A[i][k] nonzero only for k <= i / k >= i

// One MR x (NV*W) tile of C = rs o (A diag(ks) Bm) (+ C): A[i][k] at A[i*rsa + k*csa]
// (broadcast scalars, any strides), Bm rows contiguous (ldb), C rows contiguous (ldc).
template <typename T, int MR, int NV, bool KS>
HJSEQ_INLINE void tile(int64_t k0, int64_t k1, const T* A, int64_t rsa, int64_t csa,
                       const T* ks, const T* Bm, int64_t ldb, T* C, int64_t ldc, const T* rs,
                       bool accum) {
  using vec = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  vec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vec{} ;
  for (int64_t k = k0; k < k1; ++k) {
    vec b[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], Bm + k * ldb + v * W, sizeof(vec));
    const T sk = KS ? ks[k] : T(1);
    for (int r = 0; r < MR; ++r) {
      const T a = KS ? A[r * rsa + k * csa] * sk : A[r * rsa + k * csa];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      vec out = acc[r][v];
      if (rs) out *= rs[r];
      T* c = C + r * ldc + v * W;
      if (accum) {
        vec old;
        std::memcpy(&old, c, sizeof(vec));
        out += old;
      }
      std::memcpy(c, &out, sizeof(vec));
    }
  }
}

template <typename T, int MR, bool KS>
void row_block(int64_t N, int64_t k0, int64_t k1, const T* A, int64_t rsa, int64_t csa,
               const T* ks, const T* Bm, int64_t ldb, T* C, int64_t ldc, const T* rs,
               bool accum) {
  constexpr int W = Vec<T>::W;
  int64_t j = 0;
  for (; j + 2 * W <= N; j += 2 * W)
    tile<T, MR, 2, KS>(k0, k1, A, rsa, csa, ks, Bm + j, ldb, C + j, ldc, rs, accum);
  for (; j + W <= N; j += W)
    tile<T, MR, 1, KS>(k0, k1, A, rsa, csa, ks, Bm + j, ldb, C + j, ldc, rs, accum);
  for (; j < N; ++j) {  // fewer than W columns left
    for (int r = 0; r < MR; ++r) {
      T s = 0;
      for (int64_t k = k0; k < k1; ++k)
        s += (KS ? A[r * rsa + k * csa] * ks[k] : A[r * rsa + k * csa]) * Bm[k * ldb + j];
      if (rs) s *= rs[r];
      C[r * ldc + j] = accum ? C[r * ldc + j] + s : s;
    }
  }
}

// C (M x N) = rs o (A (M x K) diag(ks) Bm (K x N)) [+ C]; ks, rs optional (nullptr).
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa, const T* ks,
          const T* Bm, int64_t ldb, T* C, int64_t ldc, const T* rs, bool accum, Tri tri) {
  constexpr int MR = 6;
  for (int64_t i0 = 0; i0 < M; i0 += MR) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, M - i0));
    const int64_t k0 = tri == kUpper ? std::min(i0, K) : 0;
    const int64_t k1 = tri == kLower ? std::min(K, i0 + mr) : K;
    const T* Ai = A + i0 * rsa;
    T* Ci = C + i0 * ldc;
    const T* ri = rs ? rs + i0 : nullptr;
#define HJSEQ_SSD_ROWS(R)                                                                \
  case R:                                                                                \
    if (ks)                                                                              \
      row_block<T, R, true>(N, k0, k1, Ai, rsa, csa, ks, Bm, ldb, Ci, ldc, ri, accum);   \
    else                                                                                 \
      row_block<T, R, false>(N, k0, k1, Ai, rsa, csa, ks, Bm, ldb, Ci, ldc, ri, accum);  \
    break;
    switch (mr) {
      HJSEQ_SSD_ROWS(1)
      HJSEQ_SSD_ROWS(2)
      HJSEQ_SSD_ROWS(3)
      HJSEQ_SSD_ROWS(4)
      HJSEQ_SSD_ROWS(5)
      HJSEQ_SSD_ROWS(6)
    }
#undef HJSEQ_SSD_ROWS
  }
}

// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols, in 16 x 16 blocks: the naive
// loop writes (or reads) with a power-of-two stride that maps every access to a few L1 sets
// (a 128 x 64 state transposed that way took ~20 us instead of ~3).
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int64_t BS = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += BS) {
    const int64_t i1 = std::min(rows, i0 + BS);
    for (int64_t j0 = 0; j0 < cols; j0 += BS) {
      const int64_t j1 = std::min(cols, j0 + BS);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * ldd + i] = src[i * lds + j];
    }
  }
}

struct Chunk {
  int64_t bi, t0, len, seq;
};

struct Plan {
  std::vector<Chunk> chunks;
  std::vector<int64_t> first;  // chunks of sequence s: [first[s], first[s+1])
  std::vector<int64_t> seq_batch;
};

// Sequences: without varlen, batch row i is sequence i over [0, l); with varlen (batch 1)
// sequence s is [cu[s], cu[s+1]). Each is cut into chunks of at most Q tokens.
Plan make_plan(int64_t batch, int64_t l, const at::Tensor& cu, bool varlen, int64_t Q) {
  Plan plan;
  const int64_t nseq = varlen ? cu.numel() - 1 : batch;
  const int64_t* c = varlen ? cu.data_ptr<int64_t>() : nullptr;
  for (int64_t s = 0; s < nseq; ++s) {
    plan.first.push_back(static_cast<int64_t>(plan.chunks.size()));
    const int64_t lo = varlen ? c[s] : 0, hi = varlen ? c[s + 1] : l;
    const int64_t bi = varlen ? 0 : s;
    plan.seq_batch.push_back(bi);
    for (int64_t t0 = lo; t0 < hi; t0 += Q) plan.chunks.push_back({bi, t0, std::min(Q, hi - t0), s});
  }
  plan.first.push_back(static_cast<int64_t>(plan.chunks.size()));
  return plan;
}

// Decays of one chunk of one head: ap (log-decay summed since the last reset within the
// chunk), lr (index of that reset, 0 if none), ds, and the segment matrix Lm (T x Q rows).
template <typename T>
T decays(const T* ld, int64_t stride, int64_t len, T* ap, int64_t* lr, T* ds) {
  T a = 0, af = 0;
  bool dead = false;
  int64_t last = 0;
  for (int64_t t = 0; t < len; ++t) {
    const T v = ld[t * stride];
    if (v == -std::numeric_limits<T>::infinity()) {
      a = 0;
      last = t;
      dead = true;
    } else {
      a += v;
      af += v;
    }
    ap[t] = a;
    lr[t] = last;
    ds[t] = dead ? T(0) : hjseq::exp_(af);
  }
  return len > 0 ? ds[len - 1] : T(1);
}

template <typename T>
void segment_matrix(int64_t len, int64_t Q, const T* ap, const int64_t* lr, T* Lm) {
  for (int64_t t = 0; t < len; ++t) {
    T* row = Lm + t * Q;
    const T at_ = ap[t];
    const int64_t r0 = lr[t];
#pragma omp simd
    for (int64_t s = 0; s <= t; ++s) {
      const T e = hjseq::exp_(at_ - ap[s]);
      row[s] = s >= r0 ? e : T(0);
    }
    for (int64_t s = t + 1; s < len; ++s) row[s] = 0;
  }
}

struct Dims {
  int64_t b, l, H, P, G, N, Q;
  int64_t hpg() const { return H / G; }
};

// ---------------------------------------------------------------------------------------
// forward
template <typename T>
void forward_kernel(const Dims& d, const Plan& plan, const T* x, const T* ld, const T* Bp,
                    const T* Cp, const T* init, T* y, T* st, T* fin, T* cb) {
  const int64_t H = d.H, P = d.P, G = d.G, N = d.N, Q = d.Q, l = d.l;
  const int64_t nc = static_cast<int64_t>(plan.chunks.size());
  const int64_t nseq = static_cast<int64_t>(plan.seq_batch.size());
  std::vector<T> dtot(nc * H);
  // (1) local states S_loc^T (n x p) = B^T diag(de) X, per (chunk, head)
  at::parallel_for(0, nc * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> ap(Q), ds(Q), de(Q);
    std::vector<int64_t> lr(Q);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t c = job / H, hh = job % H, gg = hh / d.hpg();
      const Chunk& ch = plan.chunks[c];
      const int64_t row0 = ch.bi * l + ch.t0, T_ = ch.len;
      dtot[job] = decays(ld + row0 * H + hh, H, T_, ap.data(), lr.data(), ds.data());
      for (int64_t s = 0; s < T_; ++s)  // de_s = exp(sum_{s<r<T}) = L[T-1][s]
        de[s] = s >= lr[T_ - 1] ? hjseq::exp_(ap[T_ - 1] - ap[s]) : T(0);
      gemm<T>(N, P, T_, Bp + (row0 * G + gg) * N, 1, G * N, de.data(),
              x + (row0 * H + hh) * P, H * P, st + job * N * P, P, nullptr, false, kFull);
    }
  });
  // (2) states entering each chunk, sequentially per (sequence, head)
  at::parallel_for(0, nseq * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> carry(N * P), tmp(N * P);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t s = job / H, hh = job % H;
      if (init) std::copy(init + job * N * P, init + (job + 1) * N * P, carry.begin());
      else std::fill(carry.begin(), carry.end(), T(0));
      for (int64_t c = plan.first[s]; c < plan.first[s + 1]; ++c) {
        T* sc = st + (c * H + hh) * N * P;
        const T a = dtot[c * H + hh];
        pass_state(sc, carry.data(), a, N * P);
      }
      std::copy(carry.begin(), carry.end(), fin + job * N * P);
    }
  });
  // (3) outputs, per (chunk, group): G = C B^T once (written to cb[c, g] when the caller
  //     keeps it for the backward), then per head Y = (L o G) X + diag(ds) C S_in^T
  at::parallel_for(0, nc * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Bt(N * Q), Gm(Q * Q), Mm(Q * Q), ap(Q), ds(Q);
    std::vector<int64_t> lr(Q);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t c = job / G, gg = job % G;
      const Chunk& ch = plan.chunks[c];
      const int64_t row0 = ch.bi * l + ch.t0, T_ = ch.len;
      const T* Bc = Bp + (row0 * G + gg) * N;
      const T* Cc = Cp + (row0 * G + gg) * N;
      transpose(T_, N, Bc, G * N, Bt.data(), Q);
      T* const Gc = cb ? cb + job * Q * Q : Gm.data();
      gemm<T>(T_, T_, N, Cc, G * N, 1, nullptr, Bt.data(), Q, Gc, Q, nullptr, false, kFull);
      for (int64_t hh = gg * d.hpg(); hh < (gg + 1) * d.hpg(); ++hh) {
        decays(ld + row0 * H + hh, H, T_, ap.data(), lr.data(), ds.data());
        segment_matrix(T_, Q, ap.data(), lr.data(), Mm.data());
        for (int64_t t = 0; t < T_; ++t)
#pragma omp simd
          for (int64_t s = 0; s <= t; ++s) Mm[t * Q + s] *= Gc[t * Q + s];
        T* yc = y + (row0 * H + hh) * P;
        gemm<T>(T_, P, T_, Mm.data(), Q, 1, nullptr, x + (row0 * H + hh) * P, H * P, yc, H * P,
                nullptr, false, kLower);
        gemm<T>(T_, P, N, Cc, G * N, 1, nullptr, st + (c * H + hh) * N * P, P, yc, H * P,
                ds.data(), true, kFull);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// backward
template <typename T>
void backward_kernel(const Dims& d, const Plan& plan, const T* x, const T* ld, const T* Bp,
                     const T* Cp, const T* st, const T* cb, const T* dy, const T* dfin,
                     T* dx, T* dld, T* dB, T* dC, T* dinit) {
  const int64_t H = d.H, P = d.P, G = d.G, N = d.N, Q = d.Q, l = d.l;
  const int64_t nc = static_cast<int64_t>(plan.chunks.size());
  const int64_t nseq = static_cast<int64_t>(plan.seq_batch.size());
  std::vector<T> dtot(nc * H);
  // adjoint of S_out^T per chunk (phase 1 writes every element: no zero fill needed)
  const at::Tensor dso_t = hjseq::cached_empty(
      {std::max<int64_t>(nc * H * N * P, 1)}, at::TensorOptions(c10::CppTypeToScalarType<T>::value));
  T* const dso = dso_t.data_ptr<T>();
  // (1) local adjoints dS_in^T += C^T diag(ds) dY, per (chunk, head). The chunk's C and
  //     diag(ds) dY are copied to contiguous buffers first (as in phase 3: the gemm's
  //     broadcast operand missed cache on input rows G*N apart), which also takes the
  //     per-k scaling out of the gemm's inner loop.
  at::parallel_for(0, nc * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> ap(Q), ds(Q), Cl(Q * N), dYs(Q * P);
    std::vector<int64_t> lr(Q);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t c = job / H, hh = job % H, gg = hh / d.hpg();
      const Chunk& ch = plan.chunks[c];
      const int64_t row0 = ch.bi * l + ch.t0, T_ = ch.len;
      dtot[job] = decays(ld + row0 * H + hh, H, T_, ap.data(), lr.data(), ds.data());
      for (int64_t t = 0; t < T_; ++t) {
        std::copy_n(Cp + ((row0 + t) * G + gg) * N, N, Cl.data() + t * N);
        const T* dyt = dy + ((row0 + t) * H + hh) * P;
        const T ds_t = ds[t];
#pragma omp simd
        for (int64_t j = 0; j < P; ++j) dYs[t * P + j] = ds_t * dyt[j];
      }
      gemm<T>(N, P, T_, Cl.data(), 1, N, nullptr, dYs.data(), P, dso + job * N * P, P, nullptr,
              false, kFull);
    }
  });
  // (2) adjoint states leaving each chunk, backwards per (sequence, head)
  at::parallel_for(0, nseq * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> carry(N * P);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t s = job / H, hh = job % H;
      if (dfin) std::copy(dfin + job * N * P, dfin + (job + 1) * N * P, carry.begin());
      else std::fill(carry.begin(), carry.end(), T(0));
      for (int64_t c = plan.first[s + 1] - 1; c >= plan.first[s]; --c) {
        T* sc = dso + (c * H + hh) * N * P;
        const T a = dtot[c * H + hh];
        pass_state(sc, carry.data(), a, N * P);
      }
      std::copy(carry.begin(), carry.end(), dinit + job * N * P);
    }
  });
  // (3) per (chunk, group): gradients of x, ld (per head) and B, C (summed over the group);
  //     G = C B^T read from cb when the forward kept it, else recomputed
  at::parallel_for(0, nc * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Bl(Q * N), Cl(Q * N), dYl(Q * P), Bt(N * Q), Xt(P * Q), Gm(Q * Q),
        Lm(Q * Q), Mm(Q * Q), dM(Q * Q), dG(Q * Q), dBh(Q * N), dCh(Q * N), dBa(Q * N),
        dCa(Q * N), So(P * N), Si(P * N), ap(Q), ds(Q), de(Q), R(Q), v(Q), w(Q);
    std::vector<int64_t> lr(Q);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t c = job / G, gg = job % G;
      const Chunk& ch = plan.chunks[c];
      const int64_t row0 = ch.bi * l + ch.t0, T_ = ch.len;
      // B, C and (per head) dY of the chunk copied to contiguous buffers first: in the
      // inputs their rows are G*N (H*P) apart, and a gemm whose broadcast operand is the
      // first to read them stalls on six cache misses per k (that cost more than the C B^T
      // this phase skips when the forward kept it)
      for (int64_t t = 0; t < T_; ++t) {
        std::copy_n(Bp + ((row0 + t) * G + gg) * N, N, Bl.data() + t * N);
        std::copy_n(Cp + ((row0 + t) * G + gg) * N, N, Cl.data() + t * N);
      }
      const T* Bc = Bl.data();
      const T* Cc = Cl.data();
      const T* Gc = cb ? cb + job * Q * Q : Gm.data();
      if (!cb) {
        transpose(T_, N, Bc, N, Bt.data(), Q);
        gemm<T>(T_, T_, N, Cc, N, 1, nullptr, Bt.data(), Q, Gm.data(), Q, nullptr, false,
                kFull);
      }
      std::fill(dG.begin(), dG.end(), T(0));
      std::fill(dBa.begin(), dBa.end(), T(0));
      std::fill(dCa.begin(), dCa.end(), T(0));
      for (int64_t hh = gg * d.hpg(); hh < (gg + 1) * d.hpg(); ++hh) {
        const int64_t xo = (row0 * H + hh) * P;
        const T* xc = x + xo;
        for (int64_t t = 0; t < T_; ++t)
          std::copy_n(dy + xo + t * H * P, P, dYl.data() + t * P);
        const T* dyc = dYl.data();
        const T* SiT = st + (c * H + hh) * N * P;
        const T* SoT = dso + (c * H + hh) * N * P;
        const T dt = decays(ld + row0 * H + hh, H, T_, ap.data(), lr.data(), ds.data());
        segment_matrix(T_, Q, ap.data(), lr.data(), Lm.data());
        for (int64_t s = 0; s < T_; ++s) de[s] = Lm[(T_ - 1) * Q + s];
        for (int64_t t = 0; t < T_; ++t)
#pragma omp simd
          for (int64_t s = 0; s < T_; ++s) Mm[t * Q + s] = Lm[t * Q + s] * Gc[t * Q + s];
        transpose(T_, P, xc, H * P, Xt.data(), Q);
        // u0 = dt <dS_out, S_in> first: its sequential pass brings both states (out of
        // cache) into L2 faster than the transposes' strided reads would
        T u0 = 0;
#pragma omp simd reduction(+ : u0)
        for (int64_t i = 0; i < N * P; ++i) u0 += SoT[i] * SiT[i];
        u0 *= dt;
        transpose(N, P, SoT, P, So.data(), N);
        transpose(N, P, SiT, P, Si.data(), N);
        // dM = dY X^T; dX = M^T dY + diag(de) B dSo^T
        gemm<T>(T_, T_, P, dyc, P, 1, nullptr, Xt.data(), Q, dM.data(), Q, nullptr, false,
                kFull);
        gemm<T>(T_, P, T_, Mm.data(), 1, Q, nullptr, dyc, P, dx + xo, H * P, nullptr, false,
                kUpper);
        gemm<T>(T_, P, N, Bc, N, 1, nullptr, SoT, P, dx + xo, H * P, de.data(), true, kFull);
        // state-path parts of dB, dC: diag(de) X dSo and diag(ds) dY S_in
        gemm<T>(T_, N, P, xc, H * P, 1, nullptr, So.data(), N, dBh.data(), N, de.data(), false,
                kFull);
        gemm<T>(T_, N, P, dyc, P, 1, nullptr, Si.data(), N, dCh.data(), N, ds.data(), false,
                kFull);
        // (the reductions are vectorised only when told they may be reassociated)
        for (int64_t t = 0; t < T_; ++t) {
          T sw = 0, sv = 0;
#pragma omp simd reduction(+ : sw, sv)
          for (int64_t k = 0; k < N; ++k) {
            sw += dBh[t * N + k] * Bc[t * N + k];
            sv += dCh[t * N + k] * Cc[t * N + k];
            dBa[t * N + k] += dBh[t * N + k];
            dCa[t * N + k] += dCh[t * N + k];
          }
          w[t] = sw;
          v[t] = sv;
        }
        // d ld_r = sum_{t>=r, s<r} M[t][s] dM[t][s] + sum_{t>=r} v_t + u0 + sum_{s<r} w_s
        std::fill(R.begin(), R.begin() + T_, T(0));
        for (int64_t t = 0; t < T_; ++t) {
          T pref = 0;
          for (int64_t r = 0; r <= t; ++r) {
            R[r] += pref;
            pref += Mm[t * Q + r] * dM[t * Q + r];
          }
#pragma omp simd
          for (int64_t s = 0; s <= t; ++s) dG[t * Q + s] += Lm[t * Q + s] * dM[t * Q + s];
        }
        T suf = 0, pre = 0;
        for (int64_t r = T_ - 1; r >= 0; --r) {
          suf += v[r];
          R[r] += suf + u0;
        }
        for (int64_t r = 0; r < T_; ++r) {
          R[r] += pre;
          pre += w[r];
          dld[(row0 + r) * H + hh] = R[r];
        }
      }
      // intra parts of dB, dC through G = C B^T: dB = dG^T C, dC = dG B
      gemm<T>(T_, N, T_, dG.data(), 1, Q, nullptr, Cc, N, dBa.data(), N, nullptr, true,
              kUpper);
      gemm<T>(T_, N, T_, dG.data(), Q, 1, nullptr, Bc, N, dCa.data(), N, nullptr, true,
              kLower);
      for (int64_t t = 0; t < T_; ++t)
        for (int64_t k = 0; k < N; ++k) {
          dB[(row0 + t) * G * N + gg * N + k] = dBa[t * N + k];
          dC[(row0 + t) * G * N + gg * N + k] = dCa[t * N + k];
        }
    }
  });
}

Dims dims_of(const at::Tensor& x, const at::Tensor& B, int64_t Q) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), B.size(2), B.size(3), Q};
}

void check_inputs(const at::Tensor& x, const at::Tensor& ld, const at::Tensor& B,
                  const at::Tensor& C, int64_t Q) {
  for (auto* p : {&x, &ld, &B, &C}) hjseq::check_cpu_contig(*p, "ssd_scan input");
  TORCH_CHECK(x.dim() == 4 && ld.dim() == 3 && B.dim() == 4 && C.sizes() == B.sizes(),
              "ssd_scan: x (b, l, h, p), log_decay (b, l, h), B = C (b, l, g, n) expected");
  TORCH_CHECK(x.scalar_type() == ld.scalar_type() && x.scalar_type() == B.scalar_type() &&
                  x.scalar_type() == C.scalar_type(),
              "ssd_scan kernel: all inputs must share one dtype (float32 or float64)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "ssd_scan kernel: float32 or float64 inputs (the wrapper casts)");
  TORCH_CHECK(x.size(2) % B.size(2) == 0, "ssd_scan: groups must divide heads");
  TORCH_CHECK(Q >= 1, "ssd_scan: chunk_size must be >= 1");
}

#define HJSEQ_SSD_DISPATCH(TYPE, ...)                 \
  if ((TYPE) == at::kDouble) {                        \
    using scalar_t = double;                          \
    __VA_ARGS__();                                    \
  } else {                                            \
    using scalar_t = float;                           \
    __VA_ARGS__();                                    \
  }

// Returns y (b, l, h, p), final states^T (nseq, h, n, p), chunk-entry states^T (nc, h, n, p)
// and, with keep_cb, every chunk's C B^T (nc, g, Q, Q) for the backward (else an empty tensor).
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& ld,
                                     const at::Tensor& B, const at::Tensor& C,
                                     const c10::optional<at::Tensor>& init, const at::Tensor& cu,
                                     bool varlen, int64_t Q, bool keep_cb) {
  check_inputs(x, ld, B, C, Q);
  const auto d0 = dims_of(x, B, Q);
  at::Tensor cu64 = cu.to(at::kLong).contiguous();
  const Plan plan = make_plan(d0.b, d0.l, cu64, varlen, Q);
  const int64_t nc = static_cast<int64_t>(plan.chunks.size());
  const int64_t nseq = static_cast<int64_t>(plan.seq_batch.size());
  at::Tensor y = hjseq::cached_empty_like(x);
  // a shape-only bound on the chunk count (the fake kernel allocates the same)
  const int64_t nc_alloc = varlen ? (d0.l + nseq * (Q - 1)) / Q : d0.b * ((d0.l + Q - 1) / Q);
  TORCH_CHECK(nc <= nc_alloc, "ssd_scan: internal chunk count bound");
  at::Tensor st = hjseq::cached_empty({nc_alloc, d0.H, d0.N, d0.P}, x.options());
  at::Tensor fin = hjseq::cached_empty({nseq, d0.H, d0.N, d0.P}, x.options());
  at::Tensor cb = keep_cb ? hjseq::cached_empty({nc_alloc, d0.G, Q, Q}, x.options())
                          : at::empty({0}, x.options());
  at::Tensor init_c;
  if (init.has_value()) {
    init_c = init->to(x.scalar_type()).contiguous();
    TORCH_CHECK(init_c.numel() == nseq * d0.H * d0.N * d0.P, "ssd_scan: initial_states size");
  }
  HJSEQ_SSD_DISPATCH(x.scalar_type(), [&] {
    forward_kernel<scalar_t>(d0, plan, x.data_ptr<scalar_t>(),
                             ld.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(),
                             C.data_ptr<scalar_t>(),
                             init_c.defined() ? init_c.data_ptr<scalar_t>() : nullptr,
                             y.data_ptr<scalar_t>(), st.data_ptr<scalar_t>(),
                             fin.data_ptr<scalar_t>(),
                             keep_cb ? cb.data_ptr<scalar_t>() : nullptr);
  });
  return {y, fin, st, cb};
}

// y, final states^T, chunk-entry states^T (inference, or a caller that recomputes C B^T)
std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& ld, const at::Tensor& B,
                                const at::Tensor& C, const c10::optional<at::Tensor>& init,
                                const at::Tensor& cu, bool varlen, int64_t Q) {
  auto out = forward_impl(x, ld, B, C, init, cu, varlen, Q, false);
  out.pop_back();
  return out;
}

// the same and every chunk's C B^T, for backward(..., cb)
std::vector<at::Tensor> forward_keep_cb(const at::Tensor& x, const at::Tensor& ld,
                                        const at::Tensor& B, const at::Tensor& C,
                                        const c10::optional<at::Tensor>& init,
                                        const at::Tensor& cu, bool varlen, int64_t Q) {
  return forward_impl(x, ld, B, C, init, cu, varlen, Q, true);
}

// Returns dx, dld, dB, dC, dinit^T (nseq, h, n, p). cb: forward_keep_cb's C B^T, or None
// (then recomputed).
std::vector<at::Tensor> backward(const at::Tensor& dy, const c10::optional<at::Tensor>& dfin,
                                 const at::Tensor& x, const at::Tensor& ld, const at::Tensor& B,
                                 const at::Tensor& C, const at::Tensor& st, const at::Tensor& cu,
                                 bool varlen, int64_t Q, const c10::optional<at::Tensor>& cb) {
  check_inputs(x, ld, B, C, Q);
  hjseq::check_cpu_contig(dy, "dy");
  hjseq::check_cpu_contig(st, "states");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "ssd_scan backward: dy must match x");
  const auto d0 = dims_of(x, B, Q);
  at::Tensor cu64 = cu.to(at::kLong).contiguous();
  const Plan plan = make_plan(d0.b, d0.l, cu64, varlen, Q);
  const int64_t nseq = static_cast<int64_t>(plan.seq_batch.size());
  const int64_t nc = static_cast<int64_t>(plan.chunks.size());
  if (cb.has_value()) {
    hjseq::check_cpu_contig(*cb, "cb");
    TORCH_CHECK(cb->scalar_type() == x.scalar_type() && cb->dim() == 4 &&
                    cb->size(0) >= nc && cb->size(1) == d0.G && cb->size(2) == Q &&
                    cb->size(3) == Q,
                "ssd_scan backward: cb must be forward_keep_cb's (nc, g, Q, Q)");
  }
  at::Tensor dfin_c;
  if (dfin.has_value()) dfin_c = dfin->to(x.scalar_type()).contiguous();
  using hjseq::cached_empty_like;
  at::Tensor dx = cached_empty_like(x), dld = cached_empty_like(ld);
  at::Tensor dB = cached_empty_like(B), dC = cached_empty_like(C);
  at::Tensor dinit = hjseq::cached_empty({nseq, d0.H, d0.N, d0.P}, x.options());
  HJSEQ_SSD_DISPATCH(x.scalar_type(), [&] {
    backward_kernel<scalar_t>(d0, plan, x.data_ptr<scalar_t>(),
                              ld.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(),
                              C.data_ptr<scalar_t>(), st.data_ptr<scalar_t>(),
                              cb.has_value() ? cb->data_ptr<scalar_t>() : nullptr,
                              dy.data_ptr<scalar_t>(),
                              dfin_c.defined() ? dfin_c.data_ptr<scalar_t>() : nullptr,
                              dx.data_ptr<scalar_t>(), dld.data_ptr<scalar_t>(),
                              dB.data_ptr<scalar_t>(), dC.data_ptr<scalar_t>(),
                              dinit.data_ptr<scalar_t>());
  });
  return {dx, dld, dB, dC, dinit};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "ssd_scan forward (CPU)");
  m.def("forward_keep_cb", &forward_keep_cb, "ssd_scan forward (CPU), keeping C B^T per chunk");
  m.def("backward", &backward, "ssd_scan backward (CPU)", py::arg("dy"), py::arg("dfin"),
        py::arg("x"), py::arg("ld"), py::arg("B"), py::arg("C"), py::arg("st"), py::arg("cu"),
        py::arg("varlen"), py::arg("Q"), py::arg("cb") = py::none());
  hjseq::def_block_cache(m);
}
