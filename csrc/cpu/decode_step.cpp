// Fused per-token decoding step of a whole HJLM on the CPU: one call advances every block
// by one token for a batch of B rows and returns the logits.
//
//   x = embedding[id]                                                   (B, d)
//   per block:  x ← x + mixer(RMSNorm(x))
//     mamba:  xi, z = in_proj(h);  u = silu(conv_bias + Σ_k w_k [conv_state; xi]_k)
//             (conv_state shifts by one);  dt, Bv, Cv = x_proj(u);
//             Δ = softplus(dt_proj(dt) + b);  s ← exp(ΔA) s + B̄ u  (B̄ = Δ B | Δ φ1(ΔA) B);
//             y = (C·s + D u) ⊙ silu(z);  out_proj(y)
//     mamba2: z0, x0, z, xBC, dt = in_proj(h);  x, B, C = silu(conv(xBC)) (conv state shifts);
//             Δ = clamp(softplus(dt + dt_bias));  S_h ← e^{Δa_h} S_h + β x_h Bᵀ (β = Δ | Δ φ1);
//             y = S C + D x;  out_proj([silu(z0) ⊙ x0, RMSNorm_G(y ⊙ silu(z))])
//     rnn:    s ← s + Δ(−s + tanh(W_ih h + b_ih + W_hh s + b_hh));           out_proj(s)
//     gru:    r, q = σ(·), n = tanh(gi_n + r ⊙ gh_n);  s ← s + Δ(1 − q)(n − s);  out_proj(s)
//     lstm:   i, f, g, o;  c ← c + Δ(−(1 − f) c + i g);  s = o tanh(c);          out_proj(s)
//     lse:    u_k = ε logsumexp_j(z_kj / ε) (max at ε = 0), z = in_proj(h);   out_proj(u)
//   logits = lm_head(RMSNorm_f(x))
//
// Activations, states and accumulation are in T (double for a float64 model, float
// otherwise). Each projection's weight is stored as T, bfloat16 (fp32 accumulation) or
// int8 with one float scale per output row (y_o = scale_o Σ_i q_oi x_i): decoding reads every
// weight once per token, so fewer bytes per weight is the speed-up. A projection is a GEMV
// per batch row: blocks of 4 output rows against tiles of 4 batch rows (16 accumulators;
// bf16/int8 converted to float in the same loop, or once per block into an L1 buffer when
// the batch has several tiles), split over threads by output rows; batch 1 runs an AVX-512
// loop that prefetches the next block (where compiled with AVX-512). Projections with few
// inputs (dt_proj) are stored transposed and run along the outputs. States are updated in
// place.
#include "common.h"

#include <pybind11/stl.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

enum WKind { kSame = 0, kBF16 = 1, kInt8 = 2 };

struct Lin {
  at::Tensor w, scale, bias;  // w (out, in) contiguous, (in, out) if cols; scale (out,) float;
                              // bias (out,) T
  int kind = kSame;
  int64_t out = 0, in = 0;
  bool cols = false;
};

// Projections with at most this many inputs and at least kColsMinOut outputs (Mamba's
// dt_proj: in = dt_rank) are stored transposed and computed along the outputs: a dot product
// of a few dozen terms per output row would be mostly horizontal reduction.
constexpr int64_t kColsMaxIn = 64, kColsMinOut = 256;

using TensorMap = std::map<std::string, at::Tensor>;

const at::Tensor& get(const TensorMap& t, const std::string& k) {
  auto it = t.find(k);
  TORCH_CHECK(it != t.end(), "decode_step: missing tensor '", k, "'");
  return it->second;
}

Lin make_lin(const TensorMap& t, const std::string& name, at::ScalarType T) {
  Lin L;
  L.w = get(t, name + ".weight").contiguous();
  TORCH_CHECK(L.w.dim() == 2, name, ".weight must be 2-D");
  L.out = L.w.size(0);
  L.in = L.w.size(1);
  if (L.w.scalar_type() == T) {
    L.kind = kSame;
  } else if (L.w.scalar_type() == at::kBFloat16 && T == at::kFloat) {
    L.kind = kBF16;
  } else if (L.w.scalar_type() == at::kChar && T == at::kFloat) {
    L.kind = kInt8;
    L.scale = get(t, name + ".scale").to(at::kFloat).contiguous();
    TORCH_CHECK(L.scale.numel() == L.out, name, ".scale must have one entry per row");
  } else {
    TORCH_CHECK(false, "decode_step: ", name, ".weight has dtype ", L.w.scalar_type(),
                ", unsupported for activations of dtype ", T);
  }
  auto it = t.find(name + ".bias");
  if (it != t.end() && it->second.defined()) L.bias = it->second.to(T).contiguous();
  if (L.in <= kColsMaxIn && L.out >= kColsMinOut) {
    L.w = L.w.t().contiguous();
    L.cols = true;
  }
  return L;
}

// Threads of the running step (Model::threads_): 1 runs every loop inline, with no parallel
// region at all (on a busy machine each region can wait a whole time slice for a thread).
thread_local int g_threads = 0;

template <typename F>
void pfor(int64_t n, int64_t grain, const F& f) {
  if (g_threads == 1 || n <= grain) {
    if (n > 0) f(int64_t(0), n);
  } else {
    at::parallel_for(0, n, grain, f);
  }
}

HJSEQ_INLINE float bf16_to_float(uint16_t u) {
  return hjseq::bit_cast_float(static_cast<int32_t>(static_cast<uint32_t>(u) << 16));
}

constexpr int64_t kRows = 4;  // output rows per block
constexpr int64_t kCols = 4;  // batch rows per register tile (B >= 4)

// Weight element -> T (bf16: the high half of a float32; int8: the integer, scaled later).
template <typename T, typename W>
HJSEQ_INLINE T wval(W v) {
  if constexpr (std::is_same_v<W, uint16_t>) return bf16_to_float(v);
  else return static_cast<T>(v);
}

#ifdef __AVX512F__
// 16 weights from p as floats (bf16: the high half of a float32; int8: the integer).
HJSEQ_INLINE __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
HJSEQ_INLINE __m512 load16(const uint16_t* p) {
  const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
HJSEQ_INLINE __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// a[r] = Σ_i w_r[i] x[i] for 4 rows and one float input, 16 lanes per row. A GEMV streams
// its weights from DRAM once: while a block of 4 rows is read, the same places of the next
// block (the following 4 rows, `ahead` elements on) are prefetched, so that each block's 4
// streams do not start with misses.
template <typename W>
HJSEQ_INLINE void dot4x1(const W* const w[kRows], const float* x, int64_t in, int64_t ahead,
                         float a[kRows]) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    for (int64_t r = 0; r < kRows; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + i + ahead), _MM_HINT_T0);
    }
    const __m512 xv = _mm512_loadu_ps(x + i);
    s0 = _mm512_fmadd_ps(load16(w[0] + i), xv, s0);
    s1 = _mm512_fmadd_ps(load16(w[1] + i), xv, s1);
    s2 = _mm512_fmadd_ps(load16(w[2] + i), xv, s2);
    s3 = _mm512_fmadd_ps(load16(w[3] + i), xv, s3);
  }
  a[0] = _mm512_reduce_add_ps(s0);
  a[1] = _mm512_reduce_add_ps(s1);
  a[2] = _mm512_reduce_add_ps(s2);
  a[3] = _mm512_reduce_add_ps(s3);
  for (; i < in; ++i) {
    for (int64_t r = 0; r < kRows; ++r) a[r] += wval<float>(w[r][i]) * x[i];
  }
}
#endif

// acc[r][c] = Σ_i w_r[i] x_c[i] for 4 rows and nc <= kCols inputs; W converts on the fly.
template <typename T, typename W>
HJSEQ_INLINE void dot4(const W* w0, const W* w1, const W* w2, const W* w3, const T* x,
                       int64_t ldx, int64_t nc, int64_t in, T acc[kRows][kCols]) {
  if (nc == kCols) {
    const T *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    T a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
    T a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
#pragma omp simd reduction(+ : a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, \
                               a30, a31, a32, a33)
    for (int64_t i = 0; i < in; ++i) {
      const T v0 = wval<T>(w0[i]), v1 = wval<T>(w1[i]), v2 = wval<T>(w2[i]),
              v3 = wval<T>(w3[i]);
      const T y0 = x0[i], y1 = x1[i], y2 = x2[i], y3 = x3[i];
      a00 += v0 * y0; a01 += v0 * y1; a02 += v0 * y2; a03 += v0 * y3;
      a10 += v1 * y0; a11 += v1 * y1; a12 += v1 * y2; a13 += v1 * y3;
      a20 += v2 * y0; a21 += v2 * y1; a22 += v2 * y2; a23 += v2 * y3;
      a30 += v3 * y0; a31 += v3 * y1; a32 += v3 * y2; a33 += v3 * y3;
    }
    const T r[kRows][kCols] = {{a00, a01, a02, a03}, {a10, a11, a12, a13},
                               {a20, a21, a22, a23}, {a30, a31, a32, a33}};
    for (int a = 0; a < kRows; ++a)
      for (int c = 0; c < kCols; ++c) acc[a][c] = r[a][c];
    return;
  }
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    const W* const w[kRows] = {w0, w1, w2, w3};
    for (int64_t c = 0; c < nc; ++c) {
      float a[kRows];
      dot4x1<W>(w, x + c * ldx, in, c == 0 ? kRows * in : 0, a);
      for (int64_t r = 0; r < kRows; ++r) acc[r][c] = a[r];
    }
    return;
  }
#endif
  for (int64_t c = 0; c < nc; ++c) {
    const T* xc = x + c * ldx;
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t i = 0; i < in; ++i) {
      const T xv = xc[i];
      a0 += wval<T>(w0[i]) * xv;
      a1 += wval<T>(w1[i]) * xv;
      a2 += wval<T>(w2[i]) * xv;
      a3 += wval<T>(w3[i]) * xv;
    }
    acc[0][c] = a0; acc[1][c] = a1; acc[2][c] = a2; acc[3][c] = a3;
  }
}

// Blocks [lo, hi) of 4 output rows against all B inputs, weights of element type W read
// directly (a block of rows stays in L1 while the batch runs over it).
template <typename T, typename W>
void linear_rows(const Lin& L, const W* w, const T* x, int64_t B, int64_t ldx, T* y,
                 int64_t ldy, bool accumulate, int64_t lo, int64_t hi) {
  const int64_t in = L.in;
  const T* bias = L.bias.defined() ? L.bias.data_ptr<T>() : nullptr;
  const float* scale = L.kind == kInt8 ? L.scale.data_ptr<float>() : nullptr;
  T acc[kRows][kCols];
  // bf16/int8 with more than one batch tile: convert the 4 rows once into an L1 buffer
  // (converting inside the loop would repeat it for every tile)
  constexpr bool kConv = !std::is_same_v<W, T>;
  const bool buffered = kConv && B > kCols;
  std::vector<T> buf(buffered ? kRows * in : 0);
  for (int64_t blk = lo; blk < hi; ++blk) {
    const int64_t o0 = blk * kRows, nr = std::min<int64_t>(kRows, L.out - o0);
    const W* rows[kRows];
    const T* trows[kRows];
    for (int64_t r = 0; r < kRows; ++r) rows[r] = w + (o0 + std::min(r, nr - 1)) * in;
    if (buffered) {
      for (int64_t r = 0; r < kRows; ++r) {
        T* dst = buf.data() + r * in;
        const W* src = rows[r];
#pragma omp simd
        for (int64_t i = 0; i < in; ++i) dst[i] = wval<T>(src[i]);
        trows[r] = dst;
      }
    }
    for (int64_t b0 = 0; b0 < B; b0 += kCols) {
      const int64_t nc = std::min<int64_t>(kCols, B - b0);
      if (buffered) {
        dot4<T, T>(trows[0], trows[1], trows[2], trows[3], x + b0 * ldx, ldx, nc, in, acc);
      } else {
        dot4<T, W>(rows[0], rows[1], rows[2], rows[3], x + b0 * ldx, ldx, nc, in, acc);
      }
      for (int64_t c = 0; c < nc; ++c) {
        T* yb = y + (b0 + c) * ldy + o0;
        for (int64_t r = 0; r < nr; ++r) {
          T v = scale ? acc[r][c] * static_cast<T>(scale[o0 + r]) : acc[r][c];
          if (bias) v += bias[o0 + r];
          yb[r] = accumulate ? yb[r] + v : v;
        }
      }
    }
  }
}

// Output chunks [lo, hi) of kColsChunk of a transposed (cols) projection: acc[b][o] =
// Σ_i x[b, i] w[i, o] along contiguous outputs. Full tiles of kColsTileB batch rows x
// kColsTileO outputs stay in registers (each weight vector loaded once for 4 rows, each x
// value broadcast: an outer-product step with no horizontal sums); the rest, one batch row
// at a time, in an L1 accumulator.
constexpr int64_t kColsChunk = 256;
constexpr int64_t kColsTileB = 4;
constexpr int64_t kColsTileO = 64;

template <typename T>
HJSEQ_INLINE void cols_store(const T* acc, int64_t n, int64_t o0, const T* bias,
                            const float* scale, T* yb, bool accumulate) {
  for (int64_t o = 0; o < n; ++o) {
    T v = scale ? acc[o] * static_cast<T>(scale[o0 + o]) : acc[o];
    if (bias) v += bias[o0 + o];
    yb[o] = accumulate ? yb[o] + v : v;
  }
}

template <typename T, typename W>
void linear_cols(const Lin& L, const W* w, const T* x, int64_t B, int64_t ldx, T* y,
                 int64_t ldy, bool accumulate, int64_t lo, int64_t hi) {
  const T* bias = L.bias.defined() ? L.bias.data_ptr<T>() : nullptr;
  const float* scale = L.kind == kInt8 ? L.scale.data_ptr<float>() : nullptr;
  T acc[kColsChunk];
  const int64_t Bt = B - B % kColsTileB;  // rows covered by full register tiles
  for (int64_t c = lo; c < hi; ++c) {
    const int64_t o0 = c * kColsChunk, n = std::min(kColsChunk, L.out - o0);
    const int64_t nt = n - n % kColsTileO;  // outputs covered by full register tiles
    for (int64_t b0 = 0; b0 < Bt; b0 += kColsTileB) {
      const T *x0 = x + b0 * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
      for (int64_t t = 0; t < nt; t += kColsTileO) {
        T a0[kColsTileO] = {}, a1[kColsTileO] = {}, a2[kColsTileO] = {}, a3[kColsTileO] = {};
        for (int64_t i = 0; i < L.in; ++i) {
          const W* wi = w + i * L.out + o0 + t;
          const T v0 = x0[i], v1 = x1[i], v2 = x2[i], v3 = x3[i];
#pragma omp simd
          for (int64_t o = 0; o < kColsTileO; ++o) {
            const T wv = wval<T>(wi[o]);
            a0[o] += wv * v0;
            a1[o] += wv * v1;
            a2[o] += wv * v2;
            a3[o] += wv * v3;
          }
        }
        const T* tiles[kColsTileB] = {a0, a1, a2, a3};
        for (int64_t r = 0; r < kColsTileB; ++r)
          cols_store<T>(tiles[r], kColsTileO, o0 + t, bias, scale,
                           y + (b0 + r) * ldy + o0 + t, accumulate);
      }
    }
    for (int64_t b = 0; b < B; ++b) {  // what the tiles left: rows past Bt, outputs past nt
      const int64_t from = b < Bt ? nt : 0;
      if (from == n) continue;
      const T* xb = x + b * ldx;
      std::fill(acc, acc + n - from, T(0));
      for (int64_t i = 0; i < L.in; ++i) {
        const T xv = xb[i];
        const W* wi = w + i * L.out + o0 + from;
#pragma omp simd
        for (int64_t o = 0; o < n - from; ++o) acc[o] += wval<T>(wi[o]) * xv;
      }
      cols_store<T>(acc, n - from, o0 + from, bias, scale, y + b * ldy + o0 + from,
                       accumulate);
    }
  }
}

// y[b, o] (+)= bias[o] + scale[o] Σ_i W[o, i] x[b, i] for b < B, o < out.
template <typename T>
void linear(const Lin& L, const T* x, int64_t B, int64_t ldx, T* y, int64_t ldy,
            bool accumulate) {
  // kernel(w) with the weights as their stored element type (bf16/int8 only for float)
  const auto with_weights = [&](const auto& kernel) {
    if (L.kind == kSame) {
      kernel(L.w.data_ptr<T>());
    } else if constexpr (std::is_same_v<T, float>) {
      if (L.kind == kBF16) kernel(reinterpret_cast<const uint16_t*>(L.w.data_ptr()));
      else kernel(static_cast<const int8_t*>(L.w.data_ptr<int8_t>()));
    }
  };
  if (L.cols) {
    const int64_t nch = (L.out + kColsChunk - 1) / kColsChunk;
    const int64_t grain =
        std::max<int64_t>(1, 262144 / (L.in * kColsChunk * std::max<int64_t>(B, 1)));
    pfor(nch, grain, [&](int64_t lo, int64_t hi) {
      with_weights([&](const auto* w) {
        linear_cols<T>(L, w, x, B, ldx, y, ldy, accumulate, lo, hi);
      });
    });
    return;
  }
  const int64_t nblk = (L.out + kRows - 1) / kRows;
  // enough rows per task that one task does >= 256k multiply-adds: small layers stay on one
  // thread (a parallel region costs more than they do, and much more on a busy machine)
  const int64_t grain = std::max<int64_t>(1, 262144 / (L.in * kRows * std::max<int64_t>(B, 1)));
  pfor(nblk, grain, [&](int64_t lo, int64_t hi) {
    with_weights([&](const auto* w) {
      linear_rows<T>(L, w, x, B, ldx, y, ldy, accumulate, lo, hi);
    });
  });
}

// out[b] = w ⊙ x[b] / sqrt(mean(x[b]²) + eps)
template <typename T>
void rmsnorm(const T* x, const T* w, int64_t B, int64_t d, T eps, T* out) {
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x + b * d;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += xb[i] * xb[i];
    const T r = T(1) / std::sqrt(ss / T(d) + eps);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[b * d + i] = w[i] * (xb[i] * r);
  }
}

template <typename T>
HJSEQ_INLINE T phi1(T u) {
  if (u > T(-0.5) && u < T(0.5)) {
    constexpr int K = std::is_same_v<T, double> ? 17 : 9;
    T p = 1;
    for (int k = K; k >= 1; --k) p = T(1) + u / T(k + 1) * p;
    return p;
  }
  return std::expm1(u) / u;
}

// log(u) for finite u > 0 in float, branch-free so that loops over it vectorise: u = m 2^e
// with m in [√½, √2), Cephes' logf polynomial in m − 1 (≈ 1 ulp).
HJSEQ_INLINE float log_(float u) {
  const int32_t bits = __builtin_bit_cast(int32_t, u);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = hjseq::bit_cast_float((bits & 0x007fffff) | 0x3f000000);  // [½, 1)
  const bool lo = m < 0.707106781186547524f;
  e = lo ? e - 1.0f : e;
  m = lo ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z - 2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
}

// softplus(x) = log1p(eˣ) (x above 20: x, as torch). float: log1p(t) = log(u) + (t − (u − 1))/u
// with u = 1 + t, the second term restoring what rounding u lost, so that loops vectorise
// (libm's log1pf is a call of ~20 ns, which dominated the Mamba step's Δ); double: libm.
HJSEQ_INLINE float softplus_v(float x) {
  const float t = hjseq::exp_(x), u = 1.0f + t;
  const float r = log_(u) + (t - (u - 1.0f)) / u;
  return x > 20.0f ? x : r;
}
HJSEQ_INLINE double softplus_v(double x) { return hjseq::softplus_(x); }

enum Kind { kMamba = 0, kRNN = 1, kGRU = 2, kLSTM = 3, kLSE = 4, kMamba2 = 5 };

struct Layer {
  int kind = 0;
  at::Tensor norm_w;        // (d,) T
  double norm_eps = 1e-5;
  Lin in_proj, x_proj, dt_proj, out_proj, w_ih, w_hh;
  // mamba: conv_w (W, Di) (transposed), conv_b (Di,), A (Di, N), D (Di,);
  // mamba2: conv_w (W, conv_dim), conv_b (conv_dim,), A (H,), D (d_ssm,), dt_bias (H,),
  // gnorm_w (d_ssm,): the gated RMSNorm's weight (undefined without the norm)
  at::Tensor conv_w, conv_b, A, D, dt_bias, gnorm_w;
  int64_t d_inner = 0, d_state = 0, d_conv = 0, dt_rank = 0, hidden = 0, units = 0,
          atoms = 0;
  int64_t heads = 0, headdim = 0, ngroups = 0, d_ssm = 0, d_mlp = 0, conv_dim = 0;  // mamba2
  bool zoh = false, norm_before_gate = false;
  double dt = 1.0, eps = 1.0, dt_lo = 0.0, dt_hi = 0.0, gnorm_eps = 1e-5;
  int n_states() const {
    return kind == kMamba || kind == kMamba2 || kind == kLSTM ? 2 : (kind == kLSE ? 0 : 1);
  }
};

template <typename T>
const T* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// Scratch buffers, grown on demand and reused across calls.
template <typename T>
struct Scratch {
  std::vector<T> h, a, b, c, d;
  void fit(std::vector<T>& v, int64_t n) { if ((int64_t)v.size() < n) v.resize(n); }
};

// One step of the depthwise causal conv over C channels of B rows, then SiLU:
//   u[b, c] = silu(w[W−1, c] xin[b, c] + Σ_{k<W−1} w[k, c] st[b, k, c] + bias[c]),
// and the state st (B, W−1, C) (the last W−1 inputs, oldest first) shifts by one, taking xin.
// Every loop runs along the channels, so all of them vectorise.
template <typename T>
void conv_step(const Layer& L, const T* xin, int64_t ldin, T* st, int64_t B, int64_t C, T* u,
               int64_t ldu) {
  const int64_t S = L.d_conv - 1;
  const T *cw = ptr<T>(L.conv_w), *cb = ptr<T>(L.conv_b);
  auto rows = [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const T* xb = xin + b * ldin;
      T* sb = st + b * S * C;
      T* ub = u + b * ldu;
      const T* wl = cw + S * C;
#pragma omp simd
      for (int64_t d = 0; d < C; ++d) ub[d] = wl[d] * xb[d];
      for (int64_t k = 0; k < S; ++k) {
        const T *wk = cw + k * C, *sk = sb + k * C;
#pragma omp simd
        for (int64_t d = 0; d < C; ++d) ub[d] += wk[d] * sk[d];
      }
      if (S > 0) {
        std::memmove(sb, sb + C, (S - 1) * C * sizeof(T));
        std::memcpy(sb + (S - 1) * C, xb, C * sizeof(T));
      }
      if (cb) {
#pragma omp simd
        for (int64_t d = 0; d < C; ++d) ub[d] += cb[d];
      }
#pragma omp simd
      for (int64_t d = 0; d < C; ++d) ub[d] = hjseq::silu_(ub[d]);
    }
  };
  pfor(B, std::max<int64_t>(1, 65536 / (C * (S + 4))), rows);
}

template <typename T>
void mamba_step(const Layer& L, T* x, const T* h, int64_t B, int64_t dm, at::Tensor& conv,
                at::Tensor& ssm, Scratch<T>& S) {
  const int64_t Di = L.d_inner, N = L.d_state, R = L.dt_rank;
  const int64_t ldx = R + 2 * N;
  S.fit(S.a, B * 2 * Di);
  S.fit(S.b, B * Di);
  S.fit(S.c, B * ldx);
  S.fit(S.d, B * Di);
  T *xz = S.a.data(), *u = S.b.data(), *xdbl = S.c.data(), *y = S.d.data();
  linear<T>(L.in_proj, h, B, dm, xz, 2 * Di, false);
  conv_step<T>(L, xz, 2 * Di, conv.data_ptr<T>(), B, Di, u, Di);
  linear<T>(L.x_proj, u, B, Di, xdbl, ldx, false);
  linear<T>(L.dt_proj, xdbl, B, ldx, y, Di, false);  // Δ before softplus, into y
  T* hs = ssm.data_ptr<T>();
  const T *A = ptr<T>(L.A), *Dv = ptr<T>(L.D);
  const bool zoh = L.zoh;
#pragma omp simd
  for (int64_t j = 0; j < B * Di; ++j) y[j] = softplus_v(y[j]);  // Δ
  pfor(B * Di, std::max<int64_t>(1, 32768 / N), [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t b = j / Di, d = j % Di;
      const T delta = y[j];
      const T uv = u[j];
      const T* Bv = xdbl + b * ldx + R;
      const T* Cv = Bv + N;
      const T* Ar = A + d * N;
      T* hr = hs + j * N;
      T acc = 0;
      if (!zoh) {
        const T du = delta * uv;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          const T hv = hjseq::exp_(delta * Ar[n]) * hr[n] + du * Bv[n];
          hr[n] = hv;
          acc += hv * Cv[n];
        }
      } else {
        for (int64_t n = 0; n < N; ++n) {
          const T dA = delta * Ar[n];
          const T hv = hjseq::exp_(dA) * hr[n] + delta * phi1(dA) * uv * Bv[n];
          hr[n] = hv;
          acc += hv * Cv[n];
        }
      }
      y[j] = acc + Dv[d] * uv;
    }
  });
  for (int64_t b = 0; b < B; ++b) {  // the gate, vectorised
    T* yb = y + b * Di;
    const T* zb = xz + b * 2 * Di + Di;
#pragma omp simd
    for (int64_t d = 0; d < Di; ++d) yb[d] *= hjseq::silu_(zb[d]);
  }
  linear<T>(L.out_proj, y, B, Di, x, dm, true);
}

// Mamba-2 (hjseq/nn/mamba2.py, HJMamba2.step). in_proj(h) = [z0, x0, z, xBC, dt] of widths
// (M, M, d_ssm, conv_dim, H); xBC → conv + SiLU → x (H, P), B, C (G, N), head h reading
// group h / (H/G);  Δ = clamp(softplus(dt + dt_bias), lo, hi);
//   S ← e^{Δa} S + β x Bᵀ  (β = Δ, or Δ φ1(Δa) for zoh);   y = S C + D x
// then the gate: RMSNorm_G(y ⊙ silu(z)) (norm_before_gate: RMSNorm_G(y) ⊙ silu(z); no norm:
// y ⊙ silu(z)), the MLP lanes silu(z0) ⊙ x0 in front, and out_proj. ssm (B, H, P, N).
template <typename T>
void mamba2_step(const Layer& L, T* x, const T* h, int64_t B, int64_t dm, at::Tensor& conv,
                 at::Tensor& ssm, Scratch<T>& S) {
  const int64_t M = L.d_mlp, Ds = L.d_ssm, Cd = L.conv_dim, H = L.heads, P = L.headdim,
                N = L.d_state, G = L.ngroups, Z = L.in_proj.out, Di = M + Ds;
  S.fit(S.a, B * Z);
  S.fit(S.b, B * Cd);
  S.fit(S.c, B * H);
  S.fit(S.d, B * Di);
  T *zx = S.a.data(), *xbc = S.b.data(), *delta = S.c.data(), *y = S.d.data();
  linear<T>(L.in_proj, h, B, dm, zx, Z, false);
  conv_step<T>(L, zx + 2 * M + Ds, Z, conv.data_ptr<T>(), B, Cd, xbc, Cd);
  const T *dtb = ptr<T>(L.dt_bias), *A = ptr<T>(L.A), *Dv = ptr<T>(L.D);
  const T lo = static_cast<T>(L.dt_lo), hi = static_cast<T>(L.dt_hi);
  for (int64_t j = 0; j < B * H; ++j) {
    const T v = softplus_v(zx[(j / H) * Z + 2 * M + Ds + Cd + j % H] + dtb[j % H]);
    delta[j] = std::min(std::max(v, lo), hi);
  }
  T* hs = ssm.data_ptr<T>();
  const bool zoh = L.zoh;
  // one task row = one (b, head, p) row of N state entries
  pfor(B * H * P, std::max<int64_t>(1, 32768 / N), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (H * P), hd = (r / P) % H, c = hd * P + r % P;
      const T dl = delta[b * H + hd], dA = dl * A[hd];
      const T decay = hjseq::exp_(dA), xv = xbc[b * Cd + c];
      const T bx = (zoh ? dl * phi1(dA) : dl) * xv;
      const T* Bv = xbc + b * Cd + Ds + (hd / (H / G)) * N;
      const T* Cv = Bv + G * N;
      T* hr = hs + r * N;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t n = 0; n < N; ++n) {
        const T hv = decay * hr[n] + bx * Bv[n];
        hr[n] = hv;
        acc += hv * Cv[n];
      }
      y[b * Di + M + c] = acc + Dv[c] * xv;
    }
  });
  const T* gw = ptr<T>(L.gnorm_w);
  const int64_t gs = Ds / G;  // channels per norm group
  const T geps = static_cast<T>(L.gnorm_eps);
  for (int64_t b = 0; b < B; ++b) {
    const T* zb = zx + b * Z;
    T* yb = y + b * Di;
    for (int64_t i = 0; i < M; ++i) yb[i] = hjseq::silu_(zb[i]) * zb[M + i];
    T* ys = yb + M;
    const T* z = zb + 2 * M;
    if (!gw || !L.norm_before_gate) {
      for (int64_t i = 0; i < Ds; ++i) ys[i] *= hjseq::silu_(z[i]);
    }
    if (gw) {
      for (int64_t g = 0; g < G; ++g) {
        rmsnorm<T>(ys + g * gs, gw + g * gs, 1, gs, geps, ys + g * gs);  // in place
      }
    }
    if (gw && L.norm_before_gate) {
      for (int64_t i = 0; i < Ds; ++i) ys[i] *= hjseq::silu_(z[i]);
    }
  }
  linear<T>(L.out_proj, y, B, Di, x, dm, true);
}

template <typename T>
void cell_step(const Layer& L, T* x, const T* h, int64_t B, int64_t dm, at::Tensor* st,
               Scratch<T>& S) {
  const int64_t H = L.hidden, G = L.w_ih.out;
  S.fit(S.a, B * G);
  S.fit(S.b, B * G);
  T *gi = S.a.data(), *gh = S.b.data();
  T* s = st[0].data_ptr<T>();
  T* c = L.kind == kLSTM ? st[1].data_ptr<T>() : nullptr;
  linear<T>(L.w_ih, h, B, dm, gi, G, false);
  linear<T>(L.w_hh, s, B, H, gh, G, false);
  const T dt = static_cast<T>(L.dt);
  for (int64_t b = 0; b < B; ++b) {
    const T *pi = gi + b * G, *ph = gh + b * G;
    T* sb = s + b * H;
    for (int64_t k = 0; k < H; ++k) {
      if (L.kind == kRNN) {
        sb[k] += dt * (hjseq::tanh_(pi[k] + ph[k]) - sb[k]);
      } else if (L.kind == kGRU) {
        const T r = hjseq::sigmoid_(pi[k] + ph[k]);
        const T q = hjseq::sigmoid_(pi[H + k] + ph[H + k]);
        const T n = hjseq::tanh_(pi[2 * H + k] + r * ph[2 * H + k]);
        sb[k] += dt * (T(1) - q) * (n - sb[k]);
      } else {
        const T i = hjseq::sigmoid_(pi[k] + ph[k]);
        const T f = hjseq::sigmoid_(pi[H + k] + ph[H + k]);
        const T g = hjseq::tanh_(pi[2 * H + k] + ph[2 * H + k]);
        const T o = hjseq::sigmoid_(pi[3 * H + k] + ph[3 * H + k]);
        T& cb = c[b * H + k];
        cb += dt * (-(T(1) - f) * cb + i * g);
        sb[k] = o * hjseq::tanh_(cb);
      }
    }
  }
  linear<T>(L.out_proj, s, B, H, x, dm, true);
}

template <typename T>
void lse_step(const Layer& L, T* x, const T* h, int64_t B, int64_t dm, Scratch<T>& S) {
  const int64_t U = L.units, A = L.atoms;
  S.fit(S.a, B * U * A);
  S.fit(S.b, B * U);
  T *z = S.a.data(), *u = S.b.data();
  linear<T>(L.in_proj, h, B, dm, z, U * A, false);
  const T eps = static_cast<T>(L.eps);
  for (int64_t j = 0; j < B * U; ++j) {
    const T* zj = z + j * A;
    T m = zj[0];
    for (int64_t a = 1; a < A; ++a) m = std::max(m, zj[a]);
    if (eps == T(0)) {
      u[j] = m;
    } else {
      T s = 0;
      for (int64_t a = 0; a < A; ++a) s += std::exp((zj[a] - m) / eps);
      u[j] = m + eps * std::log(s);
    }
  }
  linear<T>(L.out_proj, u, B, U, x, dm, true);
}

class Model {
 public:
  Model(const TensorMap& top, const std::vector<TensorMap>& tensors,
        const std::vector<std::map<std::string, double>>& scalars, const std::string& dtype)
      : T_(dtype == "float64" ? at::kDouble : at::kFloat) {
    TORCH_CHECK(dtype == "float64" || dtype == "float32", "decode_step: dtype must be "
                "float32 or float64, got ", dtype);
    TORCH_CHECK(tensors.size() == scalars.size(), "one scalar map per layer");
    emb_ = get(top, "embedding").to(T_).contiguous();
    norm_f_ = get(top, "norm_f").to(T_).contiguous();
    norm_f_eps_ = get(top, "norm_f_eps").item<double>();
    head_ = make_lin(top, "lm_head", T_);
    d_ = emb_.size(1);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      const auto& s = scalars[i];
      auto num = [&](const char* k) {
        auto it = s.find(k);
        TORCH_CHECK(it != s.end(), "decode_step: layer ", i, " misses scalar '", k, "'");
        return it->second;
      };
      Layer L;
      L.kind = static_cast<int>(num("kind"));
      L.norm_w = get(t, "norm").to(T_).contiguous();
      L.norm_eps = num("norm_eps");
      if (L.kind == kMamba) {
        L.in_proj = make_lin(t, "in_proj", T_);
        L.x_proj = make_lin(t, "x_proj", T_);
        L.dt_proj = make_lin(t, "dt_proj", T_);
        L.out_proj = make_lin(t, "out_proj", T_);
        L.conv_w = get(t, "conv_w").to(T_).contiguous();
        auto cb = t.find("conv_b");
        if (cb != t.end()) L.conv_b = cb->second.to(T_).contiguous();
        L.A = get(t, "A").to(T_).contiguous();
        L.D = get(t, "D").to(T_).contiguous();
        L.d_inner = L.A.size(0);
        L.d_state = L.A.size(1);
        L.d_conv = L.conv_w.size(0);
        L.dt_rank = L.dt_proj.in;
        L.zoh = num("zoh") != 0;
        TORCH_CHECK(L.in_proj.out == 2 * L.d_inner && L.x_proj.out == L.dt_rank + 2 * L.d_state &&
                        L.conv_w.size(1) == L.d_inner,
                    "decode_step: inconsistent mamba shapes in layer ", i);
      } else if (L.kind == kMamba2) {
        L.in_proj = make_lin(t, "in_proj", T_);
        L.out_proj = make_lin(t, "out_proj", T_);
        L.conv_w = get(t, "conv_w").to(T_).contiguous();
        auto cb = t.find("conv_b");
        if (cb != t.end()) L.conv_b = cb->second.to(T_).contiguous();
        auto gw = t.find("gnorm");
        if (gw != t.end()) L.gnorm_w = gw->second.to(T_).contiguous();
        L.A = get(t, "A").to(T_).contiguous();
        L.D = get(t, "D").to(T_).contiguous();
        L.dt_bias = get(t, "dt_bias").to(T_).contiguous();
        L.heads = L.A.size(0);
        L.headdim = static_cast<int64_t>(num("headdim"));
        L.ngroups = static_cast<int64_t>(num("ngroups"));
        L.d_ssm = L.heads * L.headdim;
        L.conv_dim = L.conv_w.size(1);
        L.d_conv = L.conv_w.size(0);
        L.d_state = (L.conv_dim - L.d_ssm) / (2 * L.ngroups);
        L.d_mlp = (L.in_proj.out - L.d_ssm - L.conv_dim - L.heads) / 2;
        L.zoh = num("zoh") != 0;
        L.norm_before_gate = num("norm_before_gate") != 0;
        L.gnorm_eps = num("gnorm_eps");
        L.dt_lo = num("dt_lo");
        L.dt_hi = num("dt_hi");
        TORCH_CHECK(L.heads % L.ngroups == 0 && L.d_ssm % L.ngroups == 0 &&
                        L.conv_dim == L.d_ssm + 2 * L.ngroups * L.d_state &&
                        L.in_proj.out == 2 * L.d_mlp + L.d_ssm + L.conv_dim + L.heads &&
                        L.out_proj.in == L.d_mlp + L.d_ssm && L.D.numel() == L.d_ssm &&
                        L.dt_bias.numel() == L.heads &&
                        (!L.gnorm_w.defined() || L.gnorm_w.numel() == L.d_ssm),
                    "decode_step: inconsistent mamba2 shapes in layer ", i);
      } else if (L.kind == kRNN || L.kind == kGRU || L.kind == kLSTM) {
        L.w_ih = make_lin(t, "w_ih", T_);
        L.w_hh = make_lin(t, "w_hh", T_);
        L.out_proj = make_lin(t, "out_proj", T_);
        L.hidden = L.w_hh.in;
        L.dt = num("dt");
      } else if (L.kind == kLSE) {
        L.in_proj = make_lin(t, "in_proj", T_);
        L.out_proj = make_lin(t, "out_proj", T_);
        L.units = static_cast<int64_t>(num("units"));
        L.atoms = static_cast<int64_t>(num("atoms"));
        L.eps = num("eps");
      } else {
        TORCH_CHECK(false, "decode_step: unknown layer kind ", L.kind);
      }
      layers_.push_back(std::move(L));
    }
  }

  // ids (B,) int64; states: the flat list of every layer's state tensors (T, contiguous),
  // updated in place. Returns logits (B, vocab) in T.
  at::Tensor step(const at::Tensor& ids_in, std::vector<at::Tensor> states) {
    TORCH_CHECK(ids_in.dim() == 1 && ids_in.scalar_type() == at::kLong, "ids must be int64 (B,)");
    const at::Tensor ids = ids_in.contiguous();
    size_t want = 0;
    for (const auto& L : layers_) want += L.n_states();
    TORCH_CHECK(states.size() == want, "decode_step: expected ", want, " state tensors, got ",
                states.size());
    for (auto& s : states) {
      hjseq::check_cpu_contig(s, "state");
      TORCH_CHECK(s.scalar_type() == T_, "state tensors must be ", T_);
      TORCH_CHECK(s.size(0) == ids.size(0), "state batch != ids batch");
    }
    at::Tensor logits = at::empty({ids.size(0), head_.out}, emb_.options());
    g_threads = threads_ > 0 ? threads_ : at::get_num_threads();
    AT_DISPATCH_FLOATING_TYPES(T_, "decode_step", [&] { run<scalar_t>(ids, states, logits); });
    return logits;
  }

  void set_threads(int n) { threads_ = n; }

  int64_t weight_bytes() const {
    auto bytes = [](const Lin& L) {
      return L.w.defined() ? L.w.numel() * L.w.element_size() +
                                 (L.scale.defined() ? L.scale.numel() * 4 : 0) +
                                 (L.bias.defined() ? L.bias.numel() * L.bias.element_size() : 0)
                           : 0;
    };
    auto tb = [](const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; };
    int64_t n = bytes(head_) + tb(norm_f_);
    for (const auto& L : layers_) {
      n += tb(L.norm_w) + bytes(L.in_proj) + bytes(L.x_proj) + bytes(L.dt_proj) +
           bytes(L.out_proj) + bytes(L.w_ih) + bytes(L.w_hh) + tb(L.conv_w) + tb(L.conv_b) +
           tb(L.A) + tb(L.D) + tb(L.dt_bias) + tb(L.gnorm_w);
    }
    return n;
  }

 private:
  template <typename T>
  void run(const at::Tensor& ids, std::vector<at::Tensor>& states, at::Tensor& logits) {
    const int64_t B = ids.size(0), d = d_, V = emb_.size(0);
    const int64_t* id = ids.data_ptr<int64_t>();
    Scratch<T>& S = scratch<T>();
    S.fit(S.h, 2 * B * d);
    T *x = S.h.data(), *h = S.h.data() + B * d;
    const T* E = emb_.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(id[b] >= 0 && id[b] < V, "token id ", id[b], " outside [0, ", V, ")");
      std::memcpy(x + b * d, E + id[b] * d, d * sizeof(T));
    }
    size_t si = 0;
    for (const auto& L : layers_) {
      rmsnorm<T>(x, L.norm_w.data_ptr<T>(), B, d, static_cast<T>(L.norm_eps), h);
      if (L.kind == kMamba) {
        mamba_step<T>(L, x, h, B, d, states[si], states[si + 1], S);
      } else if (L.kind == kMamba2) {
        mamba2_step<T>(L, x, h, B, d, states[si], states[si + 1], S);
      } else if (L.kind == kLSE) {
        lse_step<T>(L, x, h, B, d, S);
      } else {
        cell_step<T>(L, x, h, B, d, &states[si], S);
      }
      si += L.n_states();
    }
    rmsnorm<T>(x, norm_f_.data_ptr<T>(), B, d, static_cast<T>(norm_f_eps_), h);
    linear<T>(head_, h, B, d, logits.data_ptr<T>(), head_.out, false);
  }

  template <typename T>
  Scratch<T>& scratch() {
    if constexpr (std::is_same_v<T, double>) return sd_; else return sf_;
  }

  at::ScalarType T_;
  int threads_ = 0;  // 0: torch's intra-op thread count
  at::Tensor emb_, norm_f_;
  double norm_f_eps_ = 1e-5;
  Lin head_;
  int64_t d_ = 0;
  std::vector<Layer> layers_;
  Scratch<float> sf_;
  Scratch<double> sd_;
};

// One projection on its own (tests and the benchmark's GEMV rate): x (B, in) -> (B, out).
at::Tensor linear_only(const TensorMap& t, const std::string& name, const at::Tensor& x_in) {
  const at::Tensor x = x_in.contiguous();
  TORCH_CHECK(x.dim() == 2, "x must be (B, in)");
  const Lin L = make_lin(t, name, x.scalar_type());
  TORCH_CHECK(x.size(1) == L.in, "x has ", x.size(1), " features, the weight ", L.in);
  at::Tensor y = at::empty({x.size(0), L.out}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_only", [&] {
    linear<scalar_t>(L, x.data_ptr<scalar_t>(), x.size(0), L.in, y.data_ptr<scalar_t>(),
                     L.out, false);
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Model>(m, "Model")
      .def(py::init<const TensorMap&, const std::vector<TensorMap>&,
                    const std::vector<std::map<std::string, double>>&, const std::string&>())
      .def("step", &Model::step, py::call_guard<py::gil_scoped_release>())
      .def("weight_bytes", &Model::weight_bytes)
      .def("set_threads", &Model::set_threads);
  m.def("linear", &linear_only, "one packed projection: x (B, in) -> (B, out)",
        py::call_guard<py::gil_scoped_release>());
}
