// mamba3_siso on the CPU: the work around Mamba-2's ssd_scan (csrc/cpu/ssd.cpp) for Mamba-3's
// SISO scan (definition: hjseq/ops/mamba3_siso/ref.py; the reduction to one ssd_scan is in
// hjseq/ops/mamba3_siso/chunked.py). Per (sequence, head i) over its tokens t, head i reading
// Q/K head g = i / (h / h_qk):
//
//   φ_t = (φ_{t-1} + π tanh(Angles_t) Δ_t) mod 2π          (φ before the first token: angle0)
//   q̃_t = R(φ_t) qb_t,  k̃_t = R(φ_t) kb_t,  qk_t = qb_t·kb_t   (qb = Q + Q_bias, kb = K + K_bias)
//   λ_t = σ(Trap_t),  γ_t = λ_t Δ_t,  δ_t = (1 - λ_t) Δ_t,  δn_t = δ_{t+1} (0 at a sequence end)
//   x_t = (γ_t + δn_t) v_t,   ld_t = ADT_t,   coef_t = D - δn_t qk_t
//   U_0^T = S_0^T + δ_first k_0 ⊗ v_0
//   ssd_scan(x, ld, B = k̃, C = q̃, U_0) -> y, S_T
//   out_t = (y_t + coef_t v_t) · silu(Z_t)
//
// Entry points (all tensors contiguous, float32 or float64, one dtype; cu int64 (s+1,)):
//   prep_forward   a pass in time order per (sequence, block of heads): φ (cumulative, so
//                  sequential), δn, γ + δn, ld, φ_T, U_0; then a pass over token rows (all
//                  heads of a row): cos/sin of φ once per (b, l, h, a), q̃, k̃, q̃·k̃, x, coef.
//   epilogue_forward / epilogue_backward   one pass over (b, l, h) rows of p.
//   prep_backward  a pass over token rows (all heads of a row: dV, the rotation's and the
//                  biases' gradients, dφ, GQA sums without races), then one backwards in
//                  time per (sequence, block of heads): the angle cumsum's adjoint, the δ
//                  shift, Angles, Trap, DT, ADT, the input states.
// Layouts as mamba-ssm's mamba3_siso_combined: Q, K (b, l, h_qk, n); V, Z (b, l, h, p); ADT,
// DT, Trap (b, h, l); Q_bias, K_bias (h, n); Angles (b, l, h, a); D (h,); states angle
// (s, h, a), S_0 (s, h, p, n), k_0 (s, h, n), v_0 (s, h, p). Internal: q̃, k̃ (b, l, h, n);
// x (b, l, h, p); ld (b, l, h); tok (4, b, l, h) = (coef, γ + δn, δn, qk); φ (b, l, h, a);
// U_0^T and the ssd states (s, h, n, p) (ssd.cpp's transposed layout).
#include "block_cache.h"
#include "common.h"

#include <algorithm>
#include <vector>

namespace {

constexpr double kPi = 3.14159265358979323846;

// floor(x) in float, branch-free (GCC does not vectorise floorf): the nearest integer by the
// 1.5·2^23 trick, less one where that is above x; |x| >= 2^22 is an integer already.
HJSEQ_INLINE float floor_(float x) {
  const float kRound = 12582912.0f;
  const float r = (x + kRound) - kRound;
  const float f = r > x ? r - 1.0f : r;
  return std::fabs(x) < 4194304.0f ? f : x;
}
HJSEQ_INLINE double floor_(double x) { return std::floor(x); }

// sin and cos of x (float): x = j·π/2 + r with |r| <= π/4 (three-part Cody–Waite), Cephes'
// sinf/cosf polynomials for r (max. abs. error 8e-8 on [-30, 30]), the quadrant j mod 4
// picks and signs them (float selects, so loops over it vectorise). For |x| < ~1e4 (here x is
// in [0, 2π)).
HJSEQ_INLINE void sincos_(float x, float& s, float& c) {
  const float kRound = 12582912.0f;  // 1.5·2^23: round to nearest
  const float j = (x * 0.636619772367581343f + kRound) - kRound;
  float r = x - j * 1.5703125f;
  r = r - j * 4.837512969970703125e-4f;
  r = r - j * 7.54978995489188216e-8f;
  const float z = r * r;
  const float sr = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float cr = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z +
                    4.166664568298827e-2f) * z * z - 0.5f * z + 1.0f;
  const float q = j - 4.0f * floor_(j * 0.25f);  // j mod 4
  const bool odd = q == 1.0f || q == 3.0f;
  const float ss = odd ? cr : sr;
  const float cc = odd ? sr : cr;
  s = q >= 2.0f ? -ss : ss;
  c = (q == 1.0f || q == 2.0f) ? -cc : cc;
}
HJSEQ_INLINE void sincos_(double x, double& s, double& c) {
  s = std::sin(x);
  c = std::cos(x);
}

// o = R(φ) x: the first a pairs (x_2j, x_2j+1) turned by (c_j, s_j), the rest copied.
template <typename T>
HJSEQ_INLINE void turn(const T* x, const T* c, const T* s, int64_t a, int64_t n, T* o) {
#pragma omp simd
  for (int64_t j = 0; j < a; ++j) {
    const T x0 = x[2 * j], x1 = x[2 * j + 1];
    o[2 * j] = c[j] * x0 - s[j] * x1;
    o[2 * j + 1] = s[j] * x0 + c[j] * x1;
  }
  for (int64_t k = 2 * a; k < n; ++k) o[k] = x[k];
}

struct Dims {
  int64_t b, l, hq, h, n, p, a;
  int64_t rep() const { return h / hq; }
  int64_t rows() const { return b * l; }
};

struct Span {
  int64_t bi, lo, hi;  // batch row and token range [lo, hi) of one sequence
};

// Without varlen, sequence s is batch row s over [0, l); with varlen (b = 1) it is
// [cu[s], cu[s+1]).
std::vector<Span> spans_of(const Dims& d, const at::Tensor& cu, bool varlen) {
  std::vector<Span> sp;
  if (!varlen) {
    for (int64_t s = 0; s < d.b; ++s) sp.push_back({s, 0, d.l});
    return sp;
  }
  const int64_t* c = cu.data_ptr<int64_t>();
  for (int64_t s = 0; s + 1 < cu.numel(); ++s) sp.push_back({0, c[s], c[s + 1]});
  return sp;
}

// The time-ordered passes run per (sequence, block of heads): a job walks its sequence's token
// rows in order and, in each row, its block's heads (adjacent in memory), so the (.., h, a)
// and (.., h) tensors stream instead of being read at a stride of h rows per step. Results do
// not depend on the blocking.
struct HeadBlocks {
  int64_t size, count;
};

HeadBlocks head_blocks(int64_t nseq, int64_t h) {
  const int64_t jobs = 2 * at::get_num_threads();
  const int64_t size = std::max<int64_t>(1, std::min<int64_t>(8, nseq * h / jobs));
  return {size, (h + size - 1) / size};
}

template <typename T>
HJSEQ_INLINE T sigmoid(T x) { return hjseq::sigmoid_(x); }

template <typename T>
const T* opt_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// ---------------------------------------------------------------------------------------
// forward
template <typename T>
struct FwdIn {
  const T *Q, *K, *V, *ADT, *DT, *Trap, *Qb, *Kb, *Ang, *D, *ang0, *S0, *k0, *v0;
};
template <typename T>
struct FwdOut {
  T *qt, *kt, *x, *ld, *tok, *phi, *init, *phiT, *kT;
};

// Two passes: (1) per (sequence, head), in time order: φ (the cumulative angles), δn, γ + δn,
// ld, φ_T, U_0; (2) per token row, all heads (rows stream through memory in order): cos/sin
// of φ, q̃, k̃, q̃·k̃, x, coef.
template <typename T>
void prep_forward_kernel(const Dims& d, const std::vector<Span>& sp, const FwdIn<T>& in,
                         const FwdOut<T>& out) {
  const int64_t h = d.h, n = d.n, p = d.p, a = d.a, l = d.l, hq = d.hq, rows = d.rows();
  const int64_t nseq = static_cast<int64_t>(sp.size()), blh = rows * h;
  const T pi = T(kPi), two_pi = T(2 * kPi);
  const HeadBlocks hb = head_blocks(nseq, h);
  at::parallel_for(0, nseq * hb.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> phi(hb.size * a);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t s = job / hb.count, i0 = (job % hb.count) * hb.size;
      const int64_t i1 = std::min(h, i0 + hb.size);
      const Span q = sp[s];
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < a; ++j)
          phi[(i - i0) * a + j] = in.ang0 ? in.ang0[(s * h + i) * a + j] : T(0);
      for (int64_t t = q.lo; t < q.hi; ++t) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t r = (q.bi * l + t) * h + i, c = (q.bi * h + i) * l + t;  // (b,l,h), (b,h,l)
          const T dt = in.DT[c], lam = sigmoid(in.Trap[c]);
          const T dn = t + 1 < q.hi ? (T(1) - sigmoid(in.Trap[c + 1])) * in.DT[c + 1] : T(0);
          const T* ang = in.Ang + r * a;
          T* ph = out.phi + r * a;
          T* phv = phi.data() + (i - i0) * a;
#pragma omp simd
          for (int64_t j = 0; j < a; ++j) {
            T v = phv[j] + pi * hjseq::tanh_(ang[j]) * dt;
            v = v - two_pi * floor_(v / two_pi);
            phv[j] = v;
            ph[j] = v;
          }
          out.ld[r] = in.ADT[c];
          out.tok[blh + r] = lam * dt + dn;
          out.tok[2 * blh + r] = dn;
        }
      }
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t sh = s * h + i;
        std::copy(phi.begin() + (i - i0) * a, phi.begin() + (i - i0 + 1) * a,
                  out.phiT + sh * a);
        if (!in.S0) continue;
        // U_0^T[k][j] = S_0[j][k] + δ_first k_0[k] v_0[j]
        const int64_t c = (q.bi * h + i) * l + q.lo;
        const T d1 = (T(1) - sigmoid(in.Trap[c])) * in.DT[c];
        const T* S0 = in.S0 + sh * p * n;
        const T* k0 = in.k0 + sh * n;
        const T* v0 = in.v0 + sh * p;
        T* U = out.init + sh * n * p;
        for (int64_t k = 0; k < n; ++k)
          for (int64_t j = 0; j < p; ++j) U[k * p + j] = S0[j * n + k] + d1 * k0[k] * v0[j];
      }
    }
  });
  at::parallel_for(0, rows, hjseq::grain(h * (4 * n + 2 * p)), [&](int64_t begin, int64_t end) {
    std::vector<T> cs(a), sn(a), qb(n), kb(n);
    T* csv = cs.data();
    T* snv = sn.data();
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t i = 0; i < h; ++i) {
        const int64_t r = row * h + i, g = i / d.rep();
        const T* ph = out.phi + r * a;
#pragma omp simd
        for (int64_t j = 0; j < a; ++j) sincos_(ph[j], snv[j], csv[j]);
        const T* qr = in.Q + (row * hq + g) * n;
        const T* kr = in.K + (row * hq + g) * n;
        const T* qbias = in.Qb + i * n;
        const T* kbias = in.Kb + i * n;
        T qk = 0;
#pragma omp simd reduction(+ : qk)
        for (int64_t k = 0; k < n; ++k) {
          qb[k] = qr[k] + qbias[k];
          kb[k] = kr[k] + kbias[k];
          qk += qb[k] * kb[k];
        }
        turn(qb.data(), csv, snv, a, n, out.qt + r * n);
        turn(kb.data(), csv, snv, a, n, out.kt + r * n);
        const T scale = out.tok[blh + r], dn = out.tok[2 * blh + r];
        const T* vr = in.V + r * p;
        T* xr = out.x + r * p;
#pragma omp simd
        for (int64_t k = 0; k < p; ++k) xr[k] = vr[k] * scale;
        out.tok[r] = (in.D ? in.D[i] : T(0)) - dn * qk;
        out.tok[3 * blh + r] = qk;
      }
    }
  });
  for (int64_t s = 0; s < nseq; ++s) {
    const T* klast = out.kt + (sp[s].bi * l + sp[s].hi - 1) * h * n;
    std::copy(klast, klast + h * n, out.kT + s * h * n);
  }
}

// ---------------------------------------------------------------------------------------
// epilogue
template <typename T>
void epilogue_forward_kernel(int64_t rows, int64_t p, T* y, const T* V, const T* coef,
                             const T* Z, T* out) {
  at::parallel_for(0, rows, hjseq::grain(4 * p), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* yr = y + r * p;
      const T* vr = V + r * p;
      const T c = coef[r];
#pragma omp simd
      for (int64_t k = 0; k < p; ++k) yr[k] += c * vr[k];
      if (!Z) continue;
      const T* zr = Z + r * p;
      T* o = out + r * p;  // may be y itself
#pragma omp simd
      for (int64_t k = 0; k < p; ++k) o[k] = yr[k] * hjseq::silu_(zr[k]);
    }
  });
}

// dy = dout silu(Z), dZ = dout y_pre σ(Z)(1 + Z(1 - σ(Z))) (dy = dout without Z: not written),
// dcoef = Σ_p dy v.
template <typename T>
void epilogue_backward_kernel(int64_t rows, int64_t p, const T* dout, const T* ypre,
                              const T* V, const T* Z, T* dy, T* dZ, T* dcoef) {
  at::parallel_for(0, rows, hjseq::grain(8 * p), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* go = dout + r * p;
      const T* vr = V + r * p;
      const T* dyr = Z ? dy + r * p : go;
      if (Z) {
        const T* zr = Z + r * p;
        const T* yr = ypre + r * p;
        T* dzr = dZ + r * p;
        T* dyw = dy + r * p;
#pragma omp simd
        for (int64_t k = 0; k < p; ++k) {
          const T sg = hjseq::sigmoid_(zr[k]);
          dyw[k] = go[k] * zr[k] * sg;
          dzr[k] = go[k] * yr[k] * sg * (T(1) + zr[k] * (T(1) - sg));
        }
      }
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < p; ++k) acc += dyr[k] * vr[k];
      dcoef[r] = acc;
    }
  });
}

// ---------------------------------------------------------------------------------------
// backward of prep_forward
template <typename T>
struct BwdIn {
  // gradients: of x, ld, B = k̃, C = q̃, U_0^T (ssd backward); of φ_T, k_T (may be null);
  // of the ssd output and of coef (epilogue backward)
  const T *dx, *dld, *dkt, *dqt, *dinit, *dphiT, *dkT, *dy, *dcoef;
  // forward inputs and saved values
  const T *Q, *K, *V, *DT, *Trap, *Qb, *Kb, *Ang, *S0, *k0, *v0, *tok, *phi;
};
template <typename T>
struct BwdOut {
  T *dQ, *dK, *dV, *dADT, *dDT, *dTrap, *dQb, *dKb, *dAng, *dD, *dang0, *dS0, *dk0, *dv0;
};

template <typename T>
void prep_backward_kernel(const Dims& d, const std::vector<Span>& sp, const BwdIn<T>& in,
                          const BwdOut<T>& out) {
  const int64_t h = d.h, n = d.n, p = d.p, a = d.a, l = d.l, hq = d.hq, rows = d.rows();
  const int64_t nseq = static_cast<int64_t>(sp.size()), blh = rows * h;
  const T pi = T(kPi);
  std::vector<int64_t> last_of(rows, -1);  // row -> the sequence it ends, or -1
  for (int64_t s = 0; s < nseq; ++s) last_of[sp[s].bi * l + sp[s].hi - 1] = s;
  std::vector<T> ddn(rows * h), dgam(rows * h);

  // (1) per token row, all heads: dV = dy coef + dx (γ + δn); the rotation's adjoint; dφ
  // (kept in dAngles' buffer until (2)); the q̃·k̃ term; dQ, dK summed over each Q/K head's
  // group. The bias gradients are summed per block of rows, then over the blocks in order
  // (deterministic for any thread count).
  const int64_t nblk = std::min<int64_t>(rows, 32);
  std::vector<T> dbias(nblk * 2 * h * n, T(0));
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> cs(a), sn(a), qb(n), kb(n), gk(n), dqb(n), dkb(n);
    for (int64_t blk = b0; blk < b1; ++blk) {
      T* dqbias = dbias.data() + blk * 2 * h * n;
      T* dkbias = dqbias + h * n;
      for (int64_t row = blk * rows / nblk; row < (blk + 1) * rows / nblk; ++row) {
        T* dQr = out.dQ + row * hq * n;
        T* dKr = out.dK + row * hq * n;
        std::fill(dQr, dQr + hq * n, T(0));
        std::fill(dKr, dKr + hq * n, T(0));
        const int64_t s_last = last_of[row];
        for (int64_t i = 0; i < h; ++i) {
          const int64_t r = row * h + i, g = i / d.rep();
          // x = (γ + δn) v
          const T* dxr = in.dx + r * p;
          const T* dyr = in.dy + r * p;
          const T* vr = in.V + r * p;
          T* dvr = out.dV + r * p;  // may be dy itself
          const T coef = in.tok[r], scale = in.tok[blh + r], dn = in.tok[2 * blh + r],
                  qk = in.tok[3 * blh + r];
          T dscale = 0;
#pragma omp simd reduction(+ : dscale)
          for (int64_t k = 0; k < p; ++k) {
            dscale += dxr[k] * vr[k];
            dvr[k] = dyr[k] * coef + dxr[k] * scale;
          }
          const T dc = in.dcoef[r];
          ddn[r] = dscale - dc * qk;  // coef = D - δn qk
          dgam[r] = dscale;
          const T dqk = -dc * dn;
          // qb = Q + Q_bias, kb = K + K_bias (q̃ = R qb, k̃ = R kb; qk = qb·kb)
          const T* qr = in.Q + (row * hq + g) * n;
          const T* kr = in.K + (row * hq + g) * n;
          const T* qbias = in.Qb + i * n;
          const T* kbias = in.Kb + i * n;
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) {
            qb[k] = qr[k] + qbias[k];
            kb[k] = kr[k] + kbias[k];
          }
          // rotation: d qb = R^T g, and dφ_j = q̃_2j g_2j+1 - q̃_2j+1 g_2j (+ the same for k)
          // = qb_2j (R^T g)_2j+1 - qb_2j+1 (R^T g)_2j (a rotation keeps the 2-D cross product)
          const T* gq = in.dqt + r * n;
          const T* gkr = in.dkt + r * n;
          const T* gkp = gkr;
          if (s_last >= 0 && in.dkT) {  // k_T = k̃ at the sequence's last token
            const T* e = in.dkT + (s_last * h + i) * n;
            for (int64_t k = 0; k < n; ++k) gk[k] = gkr[k] + e[k];
            gkp = gk.data();
          }
          const T* ph = in.phi + r * a;
          T* dph = out.dAng + r * a;
          T* csv = cs.data();
          T* snv = sn.data();
#pragma omp simd
          for (int64_t j = 0; j < a; ++j) sincos_(ph[j], snv[j], csv[j]);
#pragma omp simd
          for (int64_t j = 0; j < a; ++j) {
            const T g0 = gq[2 * j], g1 = gq[2 * j + 1], h0 = gkp[2 * j], h1 = gkp[2 * j + 1];
            const T q0 = csv[j] * g0 + snv[j] * g1, q1 = csv[j] * g1 - snv[j] * g0;
            const T k0 = csv[j] * h0 + snv[j] * h1, k1 = csv[j] * h1 - snv[j] * h0;
            dph[j] = qb[2 * j] * q1 - qb[2 * j + 1] * q0 + kb[2 * j] * k1 - kb[2 * j + 1] * k0;
            dqb[2 * j] = q0;
            dqb[2 * j + 1] = q1;
            dkb[2 * j] = k0;
            dkb[2 * j + 1] = k1;
          }
          for (int64_t k = 2 * a; k < n; ++k) {
            dqb[k] = gq[k];
            dkb[k] = gkp[k];
          }
          T* dQg = dQr + g * n;
          T* dKg = dKr + g * n;
          T* dqbi = dqbias + i * n;
          T* dkbi = dkbias + i * n;
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) {
            const T q_ = dqb[k] + dqk * kb[k];
            const T k_ = dkb[k] + dqk * qb[k];
            dQg[k] += q_;
            dKg[k] += k_;
            dqbi[k] += q_;
            dkbi[k] += k_;
          }
        }
      }
    }
  });
  std::fill(out.dQb, out.dQb + h * n, T(0));
  std::fill(out.dKb, out.dKb + h * n, T(0));
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const T* src = dbias.data() + blk * 2 * h * n;
    for (int64_t k = 0; k < h * n; ++k) {
      out.dQb[k] += src[k];
      out.dKb[k] += src[h * n + k];
    }
  }

  // (2) per (sequence, head), backwards in time: the angle cumsum's adjoint
  // (dinc_t = Σ_{u>=t} dφ_u + dφ_T), Angles and DT through it; the δ shift (dδ_t = dδn_{t-1},
  // and U_0's δ_first at the first token); Trap, DT through γ and δ; ADT; the states.
  std::vector<T> dDpart(nseq * h, T(0));
  const HeadBlocks hb = head_blocks(nseq, h);
  at::parallel_for(0, nseq * hb.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> dinc(hb.size * a), d_first(hb.size);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t s = job / hb.count, i0 = (job % hb.count) * hb.size;
      const int64_t i1 = std::min(h, i0 + hb.size);
      const Span q = sp[s];
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t sh = s * h + i;
        for (int64_t j = 0; j < a; ++j)
          dinc[(i - i0) * a + j] = in.dphiT ? in.dphiT[sh * a + j] : T(0);
        d_first[i - i0] = 0;  // dL/dδ_first through U_0
        if (!in.S0) continue;
        const int64_t c = (q.bi * h + i) * l + q.lo;
        const T d1 = (T(1) - sigmoid(in.Trap[c])) * in.DT[c];
        const T* dU = in.dinit + sh * n * p;
        const T* k0 = in.k0 + sh * n;
        const T* v0 = in.v0 + sh * p;
        T* dS0 = out.dS0 + sh * p * n;
        T* dk0 = out.dk0 + sh * n;
        T* dv0 = out.dv0 + sh * p;
        std::fill(dv0, dv0 + p, T(0));
        T df = 0;
        for (int64_t k = 0; k < n; ++k) {
          T acc = 0;
          for (int64_t j = 0; j < p; ++j) {
            const T gu = dU[k * p + j];
            dS0[j * n + k] = gu;
            acc += gu * v0[j];
            dv0[j] += d1 * gu * k0[k];
          }
          df += acc * k0[k];
          dk0[k] = d1 * acc;
        }
        d_first[i - i0] = df;
      }
      for (int64_t t = q.hi - 1; t >= q.lo; --t) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t r = (q.bi * l + t) * h + i, c = (q.bi * h + i) * l + t;
          const T dt = in.DT[c], lam = sigmoid(in.Trap[c]);
          const T* ang = in.Ang + r * a;
          T* dang = out.dAng + r * a;  // holds dφ_t on entry
          T* dv = dinc.data() + (i - i0) * a;
          T ddt = 0;
#pragma omp simd reduction(+ : ddt)
          for (int64_t j = 0; j < a; ++j) {
            dv[j] += dang[j];
            const T th = hjseq::tanh_(ang[j]);
            dang[j] = dv[j] * pi * dt * (T(1) - th * th);
            ddt += dv[j] * pi * th;
          }
          const T ddelta = t > q.lo ? ddn[r - h] : d_first[i - i0];  // δn_{t-1} = δ_t
          const T dg = dgam[r];
          out.dDT[c] = ddt + dg * lam + ddelta * (T(1) - lam);
          out.dTrap[c] = (dg - ddelta) * dt * lam * (T(1) - lam);
          out.dADT[c] = in.dld[r];
          dDpart[s * h + i] += in.dcoef[r];
        }
      }
      for (int64_t i = i0; i < i1; ++i)
        std::copy(dinc.begin() + (i - i0) * a, dinc.begin() + (i - i0 + 1) * a,
                  out.dang0 + (s * h + i) * a);
    }
  });
  if (out.dD) {
    std::fill(out.dD, out.dD + h, T(0));
    for (int64_t s = 0; s < nseq; ++s)
      for (int64_t i = 0; i < h; ++i) out.dD[i] += dDpart[s * h + i];
  }
}

// ---------------------------------------------------------------------------------------
// bindings
void check(const at::Tensor& t, const char* name, at::ScalarType dt) {
  hjseq::check_cpu_contig(t, name);
  TORCH_CHECK(t.scalar_type() == dt, "mamba3_siso kernel: ", name, " is ", t.scalar_type(),
              " but Q is ", dt, " (all float tensors must share one dtype; the wrapper casts)");
}

void check_opt(const c10::optional<at::Tensor>& t, const char* name, at::ScalarType dt) {
  if (t.has_value() && t->defined()) check(*t, name, dt);
}

void check_dims(const at::Tensor& t, const char* name, std::vector<int64_t> shape) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "mamba3_siso kernel: ", name,
              " has shape ", t.sizes(), ", expected ", at::IntArrayRef(shape));
}

Dims dims_of(const at::Tensor& Q, const at::Tensor& V, const at::Tensor& Angles) {
  TORCH_CHECK(Q.dim() == 4 && V.dim() == 4 && Angles.dim() == 4,
              "mamba3_siso kernel: Q (b, l, h_qk, n), V (b, l, h, p), Angles (b, l, h, a)");
  const Dims d{Q.size(0), Q.size(1), Q.size(2), V.size(2), Q.size(3), V.size(3),
               Angles.size(3)};
  TORCH_CHECK(d.hq >= 1 && d.h % d.hq == 0, "mamba3_siso kernel: h_qk must divide h");
  TORCH_CHECK(d.n % 2 == 0 && d.a >= 1 && 2 * d.a <= d.n,
              "mamba3_siso kernel: need n even and 1 <= a <= n/2");
  return d;
}

std::vector<Span> checked_spans(const Dims& d, const at::Tensor& cu, bool varlen) {
  TORCH_CHECK(cu.scalar_type() == at::kLong && cu.dim() == 1 && cu.is_contiguous(),
              "mamba3_siso kernel: cu_seqlens must be a contiguous int64 vector");
  TORCH_CHECK(!varlen || d.b == 1, "mamba3_siso kernel: varlen needs batch 1");
  std::vector<Span> sp = spans_of(d, cu, varlen);
  TORCH_CHECK(!sp.empty() && d.l >= 1, "mamba3_siso kernel: no tokens");
  if (!varlen) return sp;
  int64_t prev = 0;
  for (const Span& s : sp) {
    TORCH_CHECK(s.lo == prev && s.hi > s.lo && s.hi <= d.l,
                "mamba3_siso kernel: every sequence needs >= 1 token and cu_seqlens must "
                "rise from 0 to l");
    prev = s.hi;
  }
  TORCH_CHECK(prev == d.l, "mamba3_siso kernel: cu_seqlens must end at l");
  return sp;
}

// Returns q̃, k̃, x, ld, tok, φ, U_0^T (undefined without S_0), φ_T, k_T.
std::vector<at::Tensor> prep_forward(
    const at::Tensor& Q, const at::Tensor& K, const at::Tensor& V, const at::Tensor& ADT,
    const at::Tensor& DT, const at::Tensor& Trap, const at::Tensor& Qb, const at::Tensor& Kb,
    const at::Tensor& Angles, const c10::optional<at::Tensor>& D,
    const c10::optional<at::Tensor>& ang0, const c10::optional<at::Tensor>& S0,
    const c10::optional<at::Tensor>& k0, const c10::optional<at::Tensor>& v0,
    const at::Tensor& cu, bool varlen) {
  const auto dt = Q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble,
              "mamba3_siso kernel: float32 or float64 tensors (the wrapper casts), got ", dt);
  const Dims d = dims_of(Q, V, Angles);
  const std::vector<Span> sp = checked_spans(d, cu, varlen);
  const int64_t s = static_cast<int64_t>(sp.size());
  check(Q, "Q", dt);
  check(K, "K", dt);
  check(V, "V", dt);
  check(ADT, "ADT", dt);
  check(DT, "DT", dt);
  check(Trap, "Trap", dt);
  check(Qb, "Q_bias", dt);
  check(Kb, "K_bias", dt);
  check(Angles, "Angles", dt);
  check_dims(K, "K", {d.b, d.l, d.hq, d.n});
  for (auto* t : {&ADT, &DT, &Trap}) check_dims(*t, "ADT/DT/Trap", {d.b, d.h, d.l});
  check_dims(Qb, "Q_bias", {d.h, d.n});
  check_dims(Kb, "K_bias", {d.h, d.n});
  check_dims(Angles, "Angles", {d.b, d.l, d.h, d.a});
  check_opt(D, "D", dt);
  if (D.has_value() && D->defined()) check_dims(*D, "D", {d.h});
  const bool states = S0.has_value() && S0->defined();
  TORCH_CHECK(states == (ang0.has_value() && ang0->defined()) &&
                  states == (k0.has_value() && k0->defined()) &&
                  states == (v0.has_value() && v0->defined()),
              "mamba3_siso kernel: give all four input states or none");
  if (states) {
    check(*ang0, "angle state", dt);
    check(*S0, "ssm state", dt);
    check(*k0, "k state", dt);
    check(*v0, "v state", dt);
    check_dims(*ang0, "angle state", {s, d.h, d.a});
    check_dims(*S0, "ssm state", {s, d.h, d.p, d.n});
    check_dims(*k0, "k state", {s, d.h, d.n});
    check_dims(*v0, "v state", {s, d.h, d.p});
  }
  const auto o = Q.options();
  at::Tensor qt = hjseq::cached_empty({d.b, d.l, d.h, d.n}, o), kt = hjseq::cached_empty({d.b, d.l, d.h, d.n}, o);
  at::Tensor x = hjseq::cached_empty_like(V), ld = hjseq::cached_empty({d.b, d.l, d.h}, o);
  at::Tensor tok = hjseq::cached_empty({4, d.b, d.l, d.h}, o), phi = hjseq::cached_empty_like(Angles);
  at::Tensor init = states ? hjseq::cached_empty({s, d.h, d.n, d.p}, o) : at::Tensor();
  at::Tensor phiT = hjseq::cached_empty({s, d.h, d.a}, o), kT = hjseq::cached_empty({s, d.h, d.n}, o);
  AT_DISPATCH_FLOATING_TYPES(dt, "mamba3_siso_prep_forward", [&] {
    using T = scalar_t;
    const FwdIn<T> in{Q.data_ptr<T>(),   K.data_ptr<T>(),    V.data_ptr<T>(),
                      ADT.data_ptr<T>(), DT.data_ptr<T>(),   Trap.data_ptr<T>(),
                      Qb.data_ptr<T>(),  Kb.data_ptr<T>(),   Angles.data_ptr<T>(),
                      opt_ptr<T>(D),     opt_ptr<T>(ang0),   opt_ptr<T>(S0),
                      opt_ptr<T>(k0),    opt_ptr<T>(v0)};
    const FwdOut<T> out{qt.data_ptr<T>(),  kt.data_ptr<T>(),  x.data_ptr<T>(),
                        ld.data_ptr<T>(),  tok.data_ptr<T>(), phi.data_ptr<T>(),
                        states ? init.data_ptr<T>() : nullptr, phiT.data_ptr<T>(),
                        kT.data_ptr<T>()};
    prep_forward_kernel<T>(d, sp, in, out);
  });
  return {qt, kt, x, ld, tok, phi, init, phiT, kT};
}

// y (b, l, h, p) becomes y + coef v in place (the pre-gate output); returns y silu(Z) (in a
// new tensor with keep_y, else gated in place) or, without Z, y itself. coef: tok
// (4, b, l, h) (its first plane is read).
at::Tensor epilogue_forward(const at::Tensor& y, const at::Tensor& V, const at::Tensor& tok,
                            const c10::optional<at::Tensor>& Z, bool keep_y) {
  const auto dt = y.scalar_type();
  check(y, "y", dt);
  check(V, "V", dt);
  check(tok, "tok", dt);
  check_opt(Z, "Z", dt);
  TORCH_CHECK(y.dim() == 4 && V.sizes() == y.sizes(), "mamba3_siso kernel: y and V differ");
  const int64_t rows = y.size(0) * y.size(1) * y.size(2), p = y.size(3);
  TORCH_CHECK(tok.numel() == 4 * rows, "mamba3_siso kernel: tok must be (4, b, l, h)");
  const bool z = Z.has_value() && Z->defined();
  if (z) TORCH_CHECK(Z->sizes() == y.sizes(), "mamba3_siso kernel: Z must be like V");
  at::Tensor out = z && keep_y ? hjseq::cached_empty_like(y) : y;
  AT_DISPATCH_FLOATING_TYPES(dt, "mamba3_siso_epilogue_forward", [&] {
    epilogue_forward_kernel<scalar_t>(rows, p, y.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(),
                                      tok.data_ptr<scalar_t>(), opt_ptr<scalar_t>(Z),
                                      out.data_ptr<scalar_t>());
  });
  return out;
}

// y: the pre-gate output (only read with Z). Returns dy (the ssd output's gradient: dout
// itself without Z), dZ (undefined without Z), dcoef (b, l, h).
std::vector<at::Tensor> epilogue_backward(const at::Tensor& dout,
                                          const c10::optional<at::Tensor>& ypre,
                                          const at::Tensor& V, const at::Tensor& tok,
                                          const c10::optional<at::Tensor>& Z) {
  const auto dt = V.scalar_type();
  check(dout, "dout", dt);
  check(V, "V", dt);
  check(tok, "tok", dt);
  TORCH_CHECK(V.dim() == 4 && dout.sizes() == V.sizes(),
              "mamba3_siso kernel: dout and V must have one shape");
  const int64_t rows = V.size(0) * V.size(1) * V.size(2), p = V.size(3);
  TORCH_CHECK(tok.numel() == 4 * rows, "mamba3_siso kernel: tok must be (4, b, l, h)");
  const bool z = Z.has_value() && Z->defined();
  if (z) {  // the pre-gate output y is needed only for dZ
    check(*Z, "Z", dt);
    TORCH_CHECK(ypre.has_value() && ypre->defined(), "mamba3_siso kernel: Z needs y");
    check(*ypre, "y", dt);
    TORCH_CHECK(Z->sizes() == V.sizes() && ypre->sizes() == V.sizes(),
                "mamba3_siso kernel: Z and y must be like V");
  }
  at::Tensor dy = z ? hjseq::cached_empty_like(V) : dout;
  at::Tensor dZ = z ? hjseq::cached_empty_like(V) : at::Tensor();
  at::Tensor dcoef = hjseq::cached_empty({V.size(0), V.size(1), V.size(2)}, V.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "mamba3_siso_epilogue_backward", [&] {
    using T = scalar_t;
    epilogue_backward_kernel<T>(rows, p, dout.data_ptr<T>(),
                                z ? ypre->data_ptr<T>() : nullptr, V.data_ptr<T>(),
                                opt_ptr<T>(Z), z ? dy.data_ptr<T>() : nullptr,
                                z ? dZ.data_ptr<T>() : nullptr, dcoef.data_ptr<T>());
  });
  return {dy, dZ, dcoef};
}

// dy: the ssd output's gradient; dV (b, l, h, p) receives V's gradient (it may be dy itself,
// which is read first). Returns dQ, dK, dADT, dDT, dTrap, dQ_bias, dK_bias, dAngles, dD
// (undefined without D), dangle0, dS0, dk0, dv0 (the last three undefined without input
// states).
std::vector<at::Tensor> prep_backward(
    const at::Tensor& dx, const at::Tensor& dld, const at::Tensor& dkt, const at::Tensor& dqt,
    const at::Tensor& dinit, const c10::optional<at::Tensor>& dphiT,
    const c10::optional<at::Tensor>& dkT, const at::Tensor& dy, const at::Tensor& dcoef,
    const at::Tensor& dV, const at::Tensor& Q, const at::Tensor& K, const at::Tensor& V,
    const at::Tensor& DT, const at::Tensor& Trap, const at::Tensor& Qb, const at::Tensor& Kb,
    const at::Tensor& Angles, const c10::optional<at::Tensor>& S0,
    const c10::optional<at::Tensor>& k0, const c10::optional<at::Tensor>& v0,
    const at::Tensor& tok, const at::Tensor& phi, const at::Tensor& cu, bool varlen,
    bool has_D) {
  const auto dt = Q.scalar_type();
  const Dims d = dims_of(Q, V, Angles);
  const std::vector<Span> sp = checked_spans(d, cu, varlen);
  const int64_t s = static_cast<int64_t>(sp.size());
  for (auto* t : {&dx, &dld, &dkt, &dqt, &dinit, &dy, &dcoef, &dV, &Q, &K, &V, &DT, &Trap, &Qb,
                  &Kb, &Angles, &tok, &phi})
    check(*t, "prep_backward input", dt);
  check_dims(dx, "dx", {d.b, d.l, d.h, d.p});
  check_dims(dV, "dV", {d.b, d.l, d.h, d.p});
  check_dims(dy, "dy", {d.b, d.l, d.h, d.p});
  check_dims(dld, "dld", {d.b, d.l, d.h});
  check_dims(dcoef, "dcoef", {d.b, d.l, d.h});
  for (auto* t : {&dkt, &dqt}) check_dims(*t, "dq̃/dk̃", {d.b, d.l, d.h, d.n});
  check_dims(tok, "tok", {4, d.b, d.l, d.h});
  check_dims(phi, "phi", {d.b, d.l, d.h, d.a});
  check_dims(dinit, "dinit", {s, d.h, d.n, d.p});
  check_opt(dphiT, "dphiT", dt);
  check_opt(dkT, "dkT", dt);
  if (dphiT.has_value() && dphiT->defined()) check_dims(*dphiT, "dphiT", {s, d.h, d.a});
  if (dkT.has_value() && dkT->defined()) check_dims(*dkT, "dkT", {s, d.h, d.n});
  const bool states = S0.has_value() && S0->defined();
  if (states) {
    check(*S0, "ssm state", dt);
    check(*k0, "k state", dt);
    check(*v0, "v state", dt);
    check_dims(*S0, "ssm state", {s, d.h, d.p, d.n});
  }
  const auto o = Q.options();
  at::Tensor dQ = hjseq::cached_empty_like(Q), dK = hjseq::cached_empty_like(K);
  at::Tensor dADT = hjseq::cached_empty_like(DT), dDT = hjseq::cached_empty_like(DT), dTrap = hjseq::cached_empty_like(DT);
  at::Tensor dQb = hjseq::cached_empty_like(Qb), dKb = hjseq::cached_empty_like(Kb), dAng = hjseq::cached_empty_like(Angles);
  at::Tensor dD = has_D ? hjseq::cached_empty({d.h}, o) : at::Tensor();
  at::Tensor dang0 = hjseq::cached_empty({s, d.h, d.a}, o);
  at::Tensor dS0 = states ? hjseq::cached_empty({s, d.h, d.p, d.n}, o) : at::Tensor();
  at::Tensor dk0 = states ? hjseq::cached_empty({s, d.h, d.n}, o) : at::Tensor();
  at::Tensor dv0 = states ? hjseq::cached_empty({s, d.h, d.p}, o) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dt, "mamba3_siso_prep_backward", [&] {
    using T = scalar_t;
    const BwdIn<T> in{dx.data_ptr<T>(),     dld.data_ptr<T>(),  dkt.data_ptr<T>(),
                      dqt.data_ptr<T>(),    dinit.data_ptr<T>(), opt_ptr<T>(dphiT),
                      opt_ptr<T>(dkT),      dy.data_ptr<T>(),   dcoef.data_ptr<T>(),
                      Q.data_ptr<T>(),
                      K.data_ptr<T>(),      V.data_ptr<T>(),    DT.data_ptr<T>(),
                      Trap.data_ptr<T>(),   Qb.data_ptr<T>(),   Kb.data_ptr<T>(),
                      Angles.data_ptr<T>(), opt_ptr<T>(S0),     opt_ptr<T>(k0),
                      opt_ptr<T>(v0),       tok.data_ptr<T>(),  phi.data_ptr<T>()};
    const BwdOut<T> out{dQ.data_ptr<T>(),    dK.data_ptr<T>(),     dV.data_ptr<T>(),
                        dADT.data_ptr<T>(),  dDT.data_ptr<T>(),    dTrap.data_ptr<T>(),
                        dQb.data_ptr<T>(),   dKb.data_ptr<T>(),    dAng.data_ptr<T>(),
                        has_D ? dD.data_ptr<T>() : nullptr,        dang0.data_ptr<T>(),
                        states ? dS0.data_ptr<T>() : nullptr,
                        states ? dk0.data_ptr<T>() : nullptr,
                        states ? dv0.data_ptr<T>() : nullptr};
    prep_backward_kernel<T>(d, sp, in, out);
  });
  return {dQ, dK, dADT, dDT, dTrap, dQb, dKb, dAng, dD, dang0, dS0, dk0, dv0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("prep_forward", &prep_forward, "mamba3_siso: the scan inputs (CPU)");
  m.def("epilogue_forward", &epilogue_forward, "mamba3_siso: y + coef v, gate (CPU)");
  m.def("epilogue_backward", &epilogue_backward, "mamba3_siso: the epilogue's backward (CPU)");
  m.def("prep_backward", &prep_backward, "mamba3_siso: the scan inputs' backward (CPU)");
  hjseq::def_block_cache(m);
}
