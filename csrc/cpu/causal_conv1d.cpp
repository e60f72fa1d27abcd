// causal_conv1d on the CPU: depthwise causal convolution over the last axis of (B, D, L),
//   y[t] = act(bias + sum_k w[k] * xt[t + k]),  xt = [history (W-1) ; x]  (padded index),
// with act = identity or silu. Each (batch, channel, segment) row is copied once into a
// padded acc_t buffer, then the W taps run as vectorised loops over t.
//
// Segments: cu (S+1,) int64 offsets along L ([0, L] without varlen; batch 1 with varlen).
// History / final-state index: (s * B + b) * D + d, each W-1 long.
//
// Backward (pre = pre-activation, recomputed; gp = gy * act'(pre)):
//   dxt[t + k] += w[k] gp[t];   dw[k] += gp[t] xt[t + k];   dbias += gp[t];
//   the final state is xt's last W-1 entries, so its gradient adds to dxt[n + j];
//   dx = dxt[W-1 :], dhistory = dxt[: W-1].
// Parallel over channels in backward so that dw, dbias need no cross-thread reduction.
#include "common.h"

#include <algorithm>
#include <vector>

namespace {

template <typename acc>
HJSEQ_INLINE acc act_fwd(acc p, int64_t act) { return act ? hjseq::silu_(p) : p; }

template <typename acc>
HJSEQ_INLINE acc act_grad(acc p, int64_t act) {
  if (!act) return acc(1);
  const acc s = hjseq::sigmoid_(p);
  return s * (acc(1) + p * (acc(1) - s));
}

// Fill xb[0 .. W-1+n) with the history (or zeros) then x[lo : lo+n] in acc_t.
template <typename scalar_t, typename acc>
void load_padded(acc* xb, const scalar_t* xrow, const acc* hist, int64_t W, int64_t n) {
  for (int64_t j = 0; j < W - 1; ++j) xb[j] = hist ? hist[j] : acc(0);
  for (int64_t t = 0; t < n; ++t) xb[W - 1 + t] = hjseq::to_acc(xrow[t]);
}

// pre[t] = bias + sum_k w[k] xb[t + k]
template <typename acc>
void conv_row(acc* pre, const acc* xb, const acc* w, acc bias, int64_t W, int64_t n) {
  for (int64_t t = 0; t < n; ++t) pre[t] = bias;
  for (int64_t k = 0; k < W; ++k) {
    const acc wk = w[k];
    const acc* xk = xb + k;
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) pre[t] += wk * xk[t];
  }
}

struct Dims {
  int64_t B, D, L, W, S, act;
};

template <typename scalar_t>
void forward_kernel(const scalar_t* x, const hjseq::acc_t<scalar_t>* w,
                    const hjseq::acc_t<scalar_t>* bias, const hjseq::acc_t<scalar_t>* h0,
                    const int64_t* cu, const Dims& dm, scalar_t* y, scalar_t* fin) {
  using acc = hjseq::acc_t<scalar_t>;
  const int64_t W = dm.W, H = W - 1, jobs = dm.S * dm.B * dm.D;
  at::parallel_for(0, jobs, hjseq::grain(dm.L * W / dm.S + 1), [&](int64_t begin, int64_t end) {
    std::vector<acc> xb, pre;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t s = job / (dm.B * dm.D), bd = job % (dm.B * dm.D), d = bd % dm.D;
      const int64_t lo = cu[s], n = cu[s + 1] - lo;
      const int64_t row = bd * dm.L + lo;
      xb.resize(H + n);
      pre.resize(n);
      load_padded(xb.data(), x + row, h0 ? h0 + job * H : nullptr, W, n);
      conv_row(pre.data(), xb.data(), w + d * W, bias ? bias[d] : acc(0), W, n);
      for (int64_t t = 0; t < n; ++t) y[row + t] = hjseq::from_acc<scalar_t>(act_fwd(pre[t], dm.act));
      for (int64_t j = 0; j < H; ++j) fin[job * H + j] = hjseq::from_acc<scalar_t>(xb[n + j]);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* x, const hjseq::acc_t<scalar_t>* w,
                     const hjseq::acc_t<scalar_t>* bias, const hjseq::acc_t<scalar_t>* h0,
                     const int64_t* cu, const Dims& dm, const scalar_t* gy,
                     const scalar_t* gfin, scalar_t* dx, hjseq::acc_t<scalar_t>* dw,
                     hjseq::acc_t<scalar_t>* dbias, hjseq::acc_t<scalar_t>* dh0) {
  using acc = hjseq::acc_t<scalar_t>;
  const int64_t W = dm.W, H = W - 1;
  at::parallel_for(0, dm.D, hjseq::grain(dm.B * dm.L * W + 1), [&](int64_t begin, int64_t end) {
    std::vector<acc> xb, gp, dxb, dwk(W);
    for (int64_t d = begin; d < end; ++d) {
      const acc* wd = w + d * W;
      std::fill(dwk.begin(), dwk.end(), acc(0));
      acc db = 0;
      for (int64_t s = 0; s < dm.S; ++s) {
        for (int64_t b = 0; b < dm.B; ++b) {
          const int64_t job = (s * dm.B + b) * dm.D + d;
          const int64_t lo = cu[s], n = cu[s + 1] - lo;
          const int64_t row = (b * dm.D + d) * dm.L + lo;
          xb.resize(H + n);
          gp.resize(n);
          dxb.assign(H + n, acc(0));
          load_padded(xb.data(), x + row, h0 ? h0 + job * H : nullptr, W, n);
          conv_row(gp.data(), xb.data(), wd, bias ? bias[d] : acc(0), W, n);  // pre
          for (int64_t t = 0; t < n; ++t) {
            gp[t] = hjseq::to_acc(gy[row + t]) * act_grad(gp[t], dm.act);
            db += gp[t];
          }
          for (int64_t k = 0; k < W; ++k) {
            const acc wk = wd[k];
            acc* dk = dxb.data() + k;
            const acc* xk = xb.data() + k;
            acc sw = 0;
#pragma omp simd reduction(+ : sw)
            for (int64_t t = 0; t < n; ++t) {
              dk[t] += wk * gp[t];
              sw += gp[t] * xk[t];
            }
            dwk[k] += sw;
          }
          if (gfin)
            for (int64_t j = 0; j < H; ++j) dxb[n + j] += hjseq::to_acc(gfin[job * H + j]);
          for (int64_t t = 0; t < n; ++t) dx[row + t] = hjseq::from_acc<scalar_t>(dxb[H + t]);
          for (int64_t j = 0; j < H; ++j) dh0[job * H + j] = dxb[j];
        }
      }
      for (int64_t k = 0; k < W; ++k) dw[d * W + k] = dwk[k];
      if (dbias) dbias[d] = db;
    }
  });
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

Dims dims(const at::Tensor& x, const at::Tensor& w, const at::Tensor& cu, int64_t act) {
  TORCH_CHECK(x.dim() == 3, "causal_conv1d: x must be (B, D, L)");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(1) && w.size(1) >= 1,
              "causal_conv1d: weight must be (D, W)");
  return Dims{x.size(0), x.size(1), x.size(2), w.size(1), cu.numel() - 1, act};
}

// x (B, D, L); w (D, W); bias (D,); h0 (S*B, D, W-1); cu (S+1,); act 0 = none, 1 = silu.
// Returns y (B, D, L) and the final state (S*B, D, W-1), both in x's dtype.
std::vector<at::Tensor> forward(const at::Tensor& x_, const at::Tensor& w_,
                                const c10::optional<at::Tensor>& bias_,
                                const c10::optional<at::Tensor>& h0_, const at::Tensor& cu_,
                                int64_t act) {
  const at::Tensor x = x_.contiguous(), cu = cu_.to(at::kLong).contiguous();
  const auto acc = acc_type(x.scalar_type());
  const at::Tensor w = w_.to(acc).contiguous();
  const Dims dm = dims(x, w, cu, act);
  at::Tensor bias, h0;
  if (bias_.has_value()) bias = bias_->to(acc).contiguous();
  if (h0_.has_value()) h0 = h0_->to(acc).contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor fin = at::empty({dm.S * dm.B, dm.D, dm.W - 1}, x.options());
  HJSEQ_DISPATCH_FLOAT_TYPES(x.scalar_type(), "causal_conv1d_forward", [&] {
    using accT = hjseq::acc_t<scalar_t>;
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<accT>(),
                             bias.defined() ? bias.data_ptr<accT>() : nullptr,
                             h0.defined() ? h0.data_ptr<accT>() : nullptr,
                             cu.data_ptr<int64_t>(), dm, y.data_ptr<scalar_t>(),
                             fin.data_ptr<scalar_t>());
  });
  return {y, fin};
}

// Returns dx (x's dtype), dweight (D, W), dbias (D,) (empty when bias is None) and
// dinitial_state (S*B, D, W-1), the last three in the accumulation dtype.
std::vector<at::Tensor> backward(const at::Tensor& x_, const at::Tensor& w_,
                                 const c10::optional<at::Tensor>& bias_,
                                 const c10::optional<at::Tensor>& h0_, const at::Tensor& cu_,
                                 int64_t act, const at::Tensor& gy_,
                                 const c10::optional<at::Tensor>& gfin_) {
  const at::Tensor x = x_.contiguous(), cu = cu_.to(at::kLong).contiguous();
  const auto acc = acc_type(x.scalar_type());
  const at::Tensor w = w_.to(acc).contiguous();
  const at::Tensor gy = gy_.to(x.scalar_type()).contiguous();
  const Dims dm = dims(x, w, cu, act);
  at::Tensor bias, h0, gfin;
  if (bias_.has_value()) bias = bias_->to(acc).contiguous();
  if (h0_.has_value()) h0 = h0_->to(acc).contiguous();
  if (gfin_.has_value()) gfin = gfin_->to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw = at::empty({dm.D, dm.W}, x.options().dtype(acc));
  at::Tensor dbias = at::empty({bias.defined() ? dm.D : 0}, x.options().dtype(acc));
  at::Tensor dh0 = at::empty({dm.S * dm.B, dm.D, dm.W - 1}, x.options().dtype(acc));
  HJSEQ_DISPATCH_FLOAT_TYPES(x.scalar_type(), "causal_conv1d_backward", [&] {
    using accT = hjseq::acc_t<scalar_t>;
    backward_kernel<scalar_t>(
        x.data_ptr<scalar_t>(), w.data_ptr<accT>(),
        bias.defined() ? bias.data_ptr<accT>() : nullptr,
        h0.defined() ? h0.data_ptr<accT>() : nullptr, cu.data_ptr<int64_t>(), dm,
        gy.data_ptr<scalar_t>(), gfin.defined() ? gfin.data_ptr<scalar_t>() : nullptr,
        dx.data_ptr<scalar_t>(), dw.data_ptr<accT>(),
        bias.defined() ? dbias.data_ptr<accT>() : nullptr, dh0.data_ptr<accT>());
  });
  return {dx, dw, dbias, dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "causal_conv1d forward (CPU)");
  m.def("backward", &backward, "causal_conv1d backward (CPU)");
}
