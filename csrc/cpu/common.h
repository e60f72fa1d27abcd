// Shared helpers for the hjseq CPU kernels (csrc/cpu/*.cpp).
//
// API (stable; other kernels include this file):
//   HJSEQ_DISPATCH_FLOAT_TYPES(dtype, "name", [&] { ... scalar_t ... })
//       float32 / float64 / bfloat16 / float16 dispatch (AT_DISPATCH with two extras).
//   hjseq::acc_t<scalar_t>        accumulation type: double for double, float otherwise.
//   hjseq::to_acc(v), hjseq::from_acc<scalar_t>(v)   conversions.
//   hjseq::exp_(x), sigmoid_(x), tanh_(x), silu_(x), softplus_(x), log1p_(x)
//       float versions are branch-free (selects only, no libm calls) so `#pragma omp
//       simd` loops over them vectorise (AVX2/AVX-512 under -march=native; scalar
//       elsewhere) -- check with -fopt-info-vec; softplus_/log1p_ call std::log1p;
//       double versions call <cmath>.
//   hjseq::check_cpu_contig(t, "name")   TORCH_CHECK that a tensor is CPU + contiguous.
//   hjseq::grain(work_per_item)          at::parallel_for grain size for ~16k flops/chunk.
#pragma once

// ATen + torch's pybind glue only (not <torch/extension.h>, which pulls in the whole C++
// frontend): halves each extension's compile time. The .cpp files bind with PYBIND11_MODULE.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#define HJSEQ_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

#if defined(_MSC_VER)
#define HJSEQ_INLINE __forceinline
#else
#define HJSEQ_INLINE inline __attribute__((always_inline))
#endif

namespace hjseq {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
HJSEQ_INLINE acc_t<T> to_acc(T v) { return static_cast<acc_t<T>>(v); }

template <typename T, typename A>
HJSEQ_INLINE T from_acc(A v) { return static_cast<T>(v); }

HJSEQ_INLINE float bit_cast_float(int32_t bits) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_bit_cast(float, bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

// exp(x) in float (max rel. error 8e-8 on [-86.6, 88.7], measured against double exp): Cody–Waite reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6
// polynomial for e^r (≈1 ulp), then scale by 2^n built from the exponent bits. Branch-free.
HJSEQ_INLINE float exp_(float x) {
  const float kHi = 88.72283905206835f;  // log(FLT_MAX)
  const float kLo = -86.64f;             // below: result < 2^-125, returned as 0
  float xc = x > kHi ? kHi : x;
  xc = xc < kLo ? kLo : xc;
  // round to nearest with the 1.5·2^23 trick: vectorises (GCC does not vectorise floor)
  const float kRound = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // 2^(n-1) then *2, so n = 128 (x near log FLT_MAX) stays representable.
  const int32_t bits = (static_cast<int32_t>(n) + 126) << 23;
  const float scale = bit_cast_float(bits);
  float res = y * scale * 2.0f;
  res = x < kLo ? 0.0f : res;
  res = x > kHi ? std::numeric_limits<float>::infinity() : res;
  res = x != x ? x : res;  // NaN in, NaN out
  return res;
}
HJSEQ_INLINE double exp_(double x) { return std::exp(x); }

HJSEQ_INLINE float sigmoid_(float x) { return 1.0f / (1.0f + exp_(-x)); }
HJSEQ_INLINE double sigmoid_(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// tanh(x) = sign(x)·(1 − e)/(1 + e), e = exp(−2|x|): no overflow, abs. error ≈ 1e-7.
HJSEQ_INLINE float tanh_(float x) {
  const float ax = std::fabs(x);
  const float e = exp_(-2.0f * ax);
  const float t = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -t : t;  // a select, where copysign would block vectorisation
}
HJSEQ_INLINE double tanh_(double x) { return std::tanh(x); }

HJSEQ_INLINE float silu_(float x) { return x * sigmoid_(x); }
HJSEQ_INLINE double silu_(double x) { return x * sigmoid_(x); }

HJSEQ_INLINE float log1p_(float x) { return std::log1p(x); }
HJSEQ_INLINE double log1p_(double x) { return std::log1p(x); }

// softplus(x) = log(1 + e^x), torch's threshold 20 (identity above).
HJSEQ_INLINE float softplus_(float x) { return x > 20.0f ? x : std::log1p(exp_(x)); }
HJSEQ_INLINE double softplus_(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

inline void check_cpu_contig(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (call .contiguous())");
}

// Grain for at::parallel_for: enough items per task that a task does ~16k units of work.
inline int64_t grain(int64_t work_per_item) {
  const int64_t g = 16384 / (work_per_item > 0 ? work_per_item : 1);
  return g < 1 ? 1 : g;
}

}  // namespace hjseq
