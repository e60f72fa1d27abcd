// Portable SIMD helpers for the CPU selective scan.
//
// A "vector" is a GCC/Clang vector-extension type of HJ_VBYTES bytes (64 with AVX-512,
// 32 with AVX2, 16 otherwise: SSE/NEON); the compiler maps the arithmetic to the
// widest instructions enabled by -march. Compilers without vector extensions get a
// one-lane scalar path with the same interface.
//
// fp32 transcendental functions are polynomial (Cephes-style range reduction), so
// they vectorise and fuse into the scan loop; fp64 calls the libm function per lane
// (fp64 is the accuracy path, not the speed path).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace hjseq {

// HJ_FORCE_SCALAR (a -D flag) selects the one-lane path on any compiler, to test it.
#if (defined(__GNUC__) || defined(__clang__)) && !defined(HJ_FORCE_SCALAR)
#if defined(__AVX512F__)
#define HJ_VBYTES 64
#elif defined(__AVX2__) || defined(__AVX__)
#define HJ_VBYTES 32
#else
#define HJ_VBYTES 16
#endif
#define HJ_HAVE_VEC 1
#else
#define HJ_VBYTES 0  // scalar path
#define HJ_HAVE_VEC 0
#endif

template <typename T>
struct Simd;

#if HJ_HAVE_VEC
template <>
struct Simd<float> {
  static constexpr int W = HJ_VBYTES / 4;
  typedef float V __attribute__((vector_size(HJ_VBYTES)));
  typedef int32_t I __attribute__((vector_size(HJ_VBYTES)));
};
template <>
struct Simd<double> {
  static constexpr int W = HJ_VBYTES / 8;
  typedef double V __attribute__((vector_size(HJ_VBYTES)));
  typedef int64_t I __attribute__((vector_size(HJ_VBYTES)));
};
#else
template <>
struct Simd<float> {
  static constexpr int W = 1;
  typedef float V;
};
template <>
struct Simd<double> {
  static constexpr int W = 1;
  typedef double V;
};
#endif

template <typename T>
using vec_t = typename Simd<T>::V;

template <typename T>
inline vec_t<T> splat(T s) {
#if HJ_HAVE_VEC
  vec_t<T> r = {};
  return r + s;
#else
  return s;
#endif
}

template <typename T>
inline vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
inline T lane(const vec_t<T>& v, int i) {
#if HJ_HAVE_VEC
  return v[i];
#else
  (void)i;
  return v;
#endif
}

template <typename T>
inline void set_lane(vec_t<T>& v, int i, T s) {
#if HJ_HAVE_VEC
  v[i] = s;
#else
  (void)i;
  v = s;
#endif
}

// Elementwise select m ? a : b on a comparison result (vector or scalar: same syntax).
#define HJ_SELECT(m, a, b) ((m) ? (a) : (b))

// ---------------------------------------------------------------------------------
// Transcendentals. Math<T>::exp(x), log1p_exp(x) = softplus(x), sigmoid(x), and the
// ZOH factors phi1(x) = expm1(x)/x and psi(x) = (exp(x) - phi1(x))/x (both given
// a = exp(x) so the scan pays one exp per state update).
// ---------------------------------------------------------------------------------
template <typename T>
struct Math;

template <>
struct Math<float> {
  using V = vec_t<float>;

  // Cephes expf: x = k ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 polynomial,
  // 2^k built in the exponent bits. Max relative error ~1-2 ulp on [-87.3, 88.3];
  // inputs are clamped to that range (exp(-87.3) ~ 1e-38, so underflow stays finite
  // and normal), NaN propagates.
  static inline V exp(V x) {
#if HJ_HAVE_VEC && defined(__AVX512F__)
    // Same polynomial; AVX-512 rounds with vrndscale and applies 2^k with vscalef, so the
    // clamps are one min/max each (operand order keeps NaN: vmaxps returns the 2nd
    // operand when either is NaN).
    __m512 v = (__m512)x;
    v = _mm512_max_ps(_mm512_set1_ps(-87.3365447505531f), v);
    v = _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), v);
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return (V)_mm512_scalef_ps(p, k);
#elif HJ_HAVE_VEC
    using I = Simd<float>::I;
    const V hi = splat(88.3762626647949f), lo = splat(-87.3365447505531f);
    x = HJ_SELECT(x > hi, hi, x);
    x = HJ_SELECT(x < lo, lo, x);
    // round(x / ln2) with the 1.5*2^23 trick: the integer lands in the low mantissa bits
    const V magic = splat(12582912.0f);
    V t = x * 1.44269504088896341f + magic;
    I k = (I)t - (I)magic;
    V fk = t - magic;
    V r = x - fk * 0.693359375f;
    r = r - fk * -2.12194440e-4f;
    V p = splat(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.0f;
    I e = (k + 127) << 23;
    return p * (V)e;
#else
    return std::exp(x);
#endif
  }

  // Cephes logf for x >= 1 (finite); used only through log1p below.
  static inline V log_ge1(V x) {
#if HJ_HAVE_VEC
    using I = Simd<float>::I;
    I xi = (I)x;
    I e = ((xi >> 23) & 0xff) - 126;  // x = m 2^e, m in [0.5, 1)
    V m = (V)((xi & 0x807fffff) | 0x3f000000);
    I small = m < 0.707106781186547524f;  // -1 where true
    e = e + small;
    m = HJ_SELECT(small, m + m - 1.0f, m - 1.0f);
    V z = m * m;
    V y = splat(7.0376836292E-2f);
    y = y * m - 1.1514610310E-1f;
    y = y * m + 1.1676998740E-1f;
    y = y * m - 1.2420140846E-1f;
    y = y * m + 1.4249322787E-1f;
    y = y * m - 1.6668057665E-1f;
    y = y * m + 2.0000714765E-1f;
    y = y * m - 2.4999993993E-1f;
    y = y * m + 3.3333331174E-1f;
    y = y * m * z;
    V fe = __builtin_convertvector(e, V);
    y = y + fe * -2.12194440e-4f;
    y = y - z * 0.5f;
    return m + y + fe * 0.693359375f;
#else
    return std::log(x);
#endif
  }

  // softplus(x) = log1p(exp(x)), = x above 20 (as torch's threshold). log1p via
  // Goldberg's trick log(1+e) * e / ((1+e) - 1), exact for tiny e.
  static inline V softplus(V x) {
#if HJ_HAVE_VEC
    V e = exp(x);
    V w = e + 1.0f;
    V d = w - 1.0f;
    V l1p = HJ_SELECT(d == 0.0f, e, log_ge1(w) * (e / HJ_SELECT(d == 0.0f, splat(1.0f), d)));
    return HJ_SELECT(x > 20.0f, x, l1p);
#else
    return x > 20.0f ? x : std::log1p(std::exp(x));
#endif
  }

  static inline V sigmoid(V x) { return 1.0f / (1.0f + exp(-x)); }

  // softplus(x) and σ(x) = e/(1+e) sharing e = exp(x) (the backward needs both).
  static inline V softplus_sigmoid(V x, V* sig) {
#if HJ_HAVE_VEC
    V e = exp(x);
    V w = e + 1.0f;
    V d = w - 1.0f;
    *sig = e / w;
    V l1p = HJ_SELECT(d == 0.0f, e, log_ge1(w) * (e / HJ_SELECT(d == 0.0f, splat(1.0f), d)));
    return HJ_SELECT(x > 20.0f, x, l1p);
#else
    *sig = sigmoid(x);
    return softplus(x);
#endif
  }

  // Taylor order used for |x| < 0.5 in phi1 / psi (truncation < 1e-8 relative).
  static constexpr int kTaylor = 8;
};

template <>
struct Math<double> {
  using V = vec_t<double>;
  template <typename F>
  static inline V lanewise(V x, F f) {
#if HJ_HAVE_VEC
    V r;
    for (int i = 0; i < Simd<double>::W; ++i) r[i] = f(x[i]);
    return r;
#else
    return f(x);
#endif
  }
  static inline V exp(V x) { return lanewise(x, [](double s) { return std::exp(s); }); }
  static inline V softplus(V x) {
    return lanewise(x, [](double s) { return s > 20.0 ? s : std::log1p(std::exp(s)); });
  }
  static inline V sigmoid(V x) {
    return lanewise(x, [](double s) { return 1.0 / (1.0 + std::exp(-s)); });
  }
  static inline V softplus_sigmoid(V x, V* sig) {
    *sig = sigmoid(x);
    return softplus(x);
  }
  static constexpr int kTaylor = 15;
};

constexpr double inv_factorial(int n) {
  double f = 1;
  for (int i = 2; i <= n; ++i) f *= i;
  return 1.0 / f;
}

// phi1(x) = expm1(x)/x (-> 1 at x = 0), given a = exp(x). Taylor sum_k x^k/(k+1)! for
// |x| < 1/2 (no cancellation in a - 1), (a - 1)/x outside.
template <typename T>
inline vec_t<T> phi1(vec_t<T> x, vec_t<T> a) {
  using V = vec_t<T>;
  constexpr int K = Math<T>::kTaylor;
  V p = splat<T>(T(inv_factorial(K + 1)));
  for (int k = K - 1; k >= 0; --k) p = p * x + T(inv_factorial(k + 1));
  V big = (a - T(1)) / x;
  V inner = HJ_SELECT(x < T(0.5), p, big);
  return HJ_SELECT(x > T(-0.5), inner, big);
}

// psi(x) = (exp(x) - phi1(x))/x = phi1'(x) (-> 1/2 at x = 0): Taylor sum_k (k+1)x^k/(k+2)!
// for |x| < 1/2, the closed form outside. d/dA [expm1(ΔA)/A] = Δ² psi(ΔA).
template <typename T>
inline vec_t<T> psi(vec_t<T> x, vec_t<T> a, vec_t<T> ph1) {
  using V = vec_t<T>;
  constexpr int K = Math<T>::kTaylor;
  V p = splat<T>(T((K + 1) * inv_factorial(K + 2)));
  for (int k = K - 1; k >= 0; --k) p = p * x + T((k + 1) * inv_factorial(k + 2));
  V big = (a - ph1) / x;
  V inner = HJ_SELECT(x < T(0.5), p, big);
  return HJ_SELECT(x > T(-0.5), inner, big);
}

}  // namespace hjseq
