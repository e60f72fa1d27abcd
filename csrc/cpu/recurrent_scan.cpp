// recurrent_scan on the CPU: HJRNN / HJGRU / HJLSTM (explicit Euler, step dt) as one fused
// time loop. See hjseq/ops/recurrent_scan/ref.py for the update rules.
//
// Forward: one GEMM for all input projections GI = X W_ih^T + b_ih + b_hh ((B, L, G*H);
// GRU's b_hn stays in the cell, inside r ⊙ (W_hn h + b_hn)), then per step one
// BLAS GEMM GH = h W_hh^T and a fused pointwise cell that writes
// h (and c), the output, and the few activations the backward needs (time-major):
//   rnn_tanh: S1 = a = tanh(gi + gh)                              (L, B, H)
//   gru:      S1 = [r, s, n, gh_n]                                 (L, B, 4H)
//   lstm:     S1 = [i, f, g, o] (activated), S2 = c_t (after noise) (L, B, 4H), (L, B, H)
// Backward (BPTT): per step a fused pointwise pass producing the pre-activation gate
// gradients dGH_t (and dGI_t for gru, where the n gate differs), then
// dh_{t-1} = (direct part) + dGH_t W_hh (one GEMM per step). Weight and input gradients
// are single large GEMMs after the loop: dX = dGI W_ih, dW_ih = dGI^T X,
// dW_hh = dGH^T H_prev, db_ih = sum dGI, db_hh = sum dGH.
// Inputs are float32 or float64 (the Python wrapper upcasts bf16/fp16).
#include "common.h"

#include <algorithm>
#include <vector>

namespace {

enum Cell : int64_t { kRNN = 0, kGRU = 1, kLSTM = 2 };

int64_t gates_of(int64_t cell) { return cell == kRNN ? 1 : (cell == kGRU ? 3 : 4); }

// Rows of the (B, H) pointwise work per parallel task: a step's cell is cheap next to its
// GEMM, so it only goes parallel (one fork/join per step) when a task gets >= 32k elements.
int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1)); }

template <typename T>
void fwd_step(int64_t cell, int64_t t, int64_t ts, int64_t r0, int64_t r1, int64_t B, int64_t L,
              int64_t H, T dt, const T* gi, const T* gh, const T* bhn, const T* hp, const T* cp,
              const T* noise, T* hn, T* cn, T* out, T* s1, T* s2) {
  // rows [r0, r1) of the batch; pointers index the whole (B, ·) buffers. The gates of step
  // t are stored at time slot ts of s1/s2 (t when saving for backward, else always 0).
  const int64_t G = gates_of(cell), GH = G * H;
  at::parallel_for(r0, r1, row_grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* gib = gi + (b * L + t) * GH;
      const T* ghb = gh + b * GH;
      const T* hpb = hp + b * H;
      const T* nz = noise ? noise + (b * L + t) * H : nullptr;
      T* hnb = hn + b * H;
      T* ob = out + (b * L + t) * H;
      if (cell == kRNN) {
        T* ab = s1 + (ts * B + b) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T a = hjseq::tanh_(gib[j] + ghb[j]);
          T h = hpb[j] + dt * (a - hpb[j]);
          if (nz) h += nz[j];
          ab[j] = a;
          hnb[j] = h;
          ob[j] = h;
        }
      } else if (cell == kGRU) {
        T* sb = s1 + (ts * B + b) * 4 * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T r = hjseq::sigmoid_(gib[j] + ghb[j]);
          const T s = hjseq::sigmoid_(gib[H + j] + ghb[H + j]);
          const T ghn = ghb[2 * H + j] + (bhn ? bhn[j] : T(0));
          const T n = hjseq::tanh_(gib[2 * H + j] + r * ghn);
          T h = hpb[j] + dt * (T(1) - s) * (n - hpb[j]);
          if (nz) h += nz[j];
          sb[j] = r;
          sb[H + j] = s;
          sb[2 * H + j] = n;
          sb[3 * H + j] = ghn;
          hnb[j] = h;
          ob[j] = h;
        }
      } else {
        T* sb = s1 + (ts * B + b) * 4 * H;
        T* cb = s2 + (ts * B + b) * H;
        const T* cpb = cp + b * H;
        T* cnb = cn + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T i = hjseq::sigmoid_(gib[j] + ghb[j]);
          const T f = hjseq::sigmoid_(gib[H + j] + ghb[H + j]);
          const T g = hjseq::tanh_(gib[2 * H + j] + ghb[2 * H + j]);
          const T o = hjseq::sigmoid_(gib[3 * H + j] + ghb[3 * H + j]);
          T c = cpb[j] + dt * (-(T(1) - f) * cpb[j] + i * g);
          if (nz) c += nz[j];
          const T h = o * hjseq::tanh_(c);
          sb[j] = i;
          sb[H + j] = f;
          sb[2 * H + j] = g;
          sb[3 * H + j] = o;
          cb[j] = c;
          cnb[j] = c;
          hnb[j] = h;
          ob[j] = h;
        }
      }
    }
  });
}

// x (B, L, I); w_ih (GH, I); w_hh (GH, H); b_ih, b_hh (GH,) or None; h0 (B, H);
// c0 (B, H) for lstm; noise (B, L, H) or None.
// Returns out (B, L, H), h_T (B, H), c_T (B, H) (empty unless lstm), S1, S2 (see top).
std::vector<at::Tensor> forward(int64_t cell, const at::Tensor& x_, const at::Tensor& w_ih,
                                const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0_,
                                const c10::optional<at::Tensor>& c0_,
                                const c10::optional<at::Tensor>& noise_, double dt,
                                bool save) {
  TORCH_CHECK(cell >= 0 && cell <= 2, "recurrent_scan: unknown cell code ", cell);
  TORCH_CHECK(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble,
              "recurrent_scan cpu kernel takes float32/float64");
  const at::Tensor x = x_.contiguous();
  const int64_t B = x.size(0), L = x.size(1), I = x.size(2), H = w_hh.size(1);
  const int64_t G = gates_of(cell), GH = G * H;
  TORCH_CHECK(w_ih.size(0) == GH && w_hh.size(0) == GH, "recurrent_scan: weight shapes");
  const auto opt = x.options();
  // input projections for all steps at once, time-major
  // b_hh is folded into the input projections (gh = h W_hh^T needs no bias copy per step),
  // except GRU's b_hn, which r multiplies: it is added in the cell.
  at::Tensor bias, b_hn;
  if (b_hh.has_value()) {
    if (cell == kGRU) {
      bias = at::cat({b_hh->narrow(0, 0, 2 * H), at::zeros({H}, opt)});
      b_hn = b_hh->narrow(0, 2 * H, H).contiguous();
    } else {
      bias = *b_hh;
    }
  }
  if (b_ih.has_value()) bias = bias.defined() ? bias + *b_ih : *b_ih;
  const at::Tensor x2 = x.view({B * L, I});  // batch-major GI (B, L, G*H): no transpose copy
  const at::Tensor gi = bias.defined() ? at::addmm(bias, x2, w_ih.t()) : at::mm(x2, w_ih.t());
  at::Tensor out = at::empty({B, L, H}, opt);
  // per-step gates for backward (L time slots), or one reused slot when no backward follows
  const int64_t slots = save ? L : 1;
  at::Tensor s1 = at::empty({slots, B, cell == kRNN ? H : 4 * H}, opt);
  at::Tensor s2 = at::empty({cell == kLSTM ? slots : 0, B, H}, opt);
  at::Tensor h = h0_.contiguous().clone(), h_next = at::empty({B, H}, opt);
  at::Tensor c, c_next;
  if (cell == kLSTM) {
    c = c0_.has_value() ? c0_->contiguous().clone() : at::zeros({B, H}, opt);
    c_next = at::empty({B, H}, opt);
  }
  at::Tensor noise;
  if (noise_.has_value()) noise = noise_->contiguous();
  at::Tensor gh = at::empty({B, GH}, opt);
  const at::Tensor w_hh_t = w_hh.t();
  // Batch rows are independent recurrences. With several threads and enough rows, each
  // thread runs its own block of rows through all L steps (single-threaded GEMMs): one
  // fork/join per call instead of one per step, which dominates for small per-step GEMMs.
  // Otherwise one row block, and the per-step GEMM and cell parallelise internally.
  const int64_t nthreads = at::get_num_threads();
  const int64_t block_rows = (nthreads > 1 && B >= nthreads) ? (B + nthreads - 1) / nthreads : B;
  at::Tensor hbuf[2] = {h, h_next};
  at::Tensor cbuf[2] = {c, c_next};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "recurrent_scan_forward", [&] {
    auto run_rows = [&](int64_t r0, int64_t r1) {
      // worker threads do not inherit the caller's dispatch state: stay below autograd
      at::AutoDispatchBelowAutograd below_autograd;
      at::Tensor gh_rows = gh.narrow(0, r0, r1 - r0);
      for (int64_t t = 0; t < L; ++t) {
        const at::Tensor& hc = hbuf[t & 1];
        const at::Tensor& hn = hbuf[(t + 1) & 1];
        at::mm_out(gh_rows, hc.narrow(0, r0, r1 - r0), w_hh_t);
        fwd_step<scalar_t>(cell, t, save ? t : 0, r0, r1, B, L, H, static_cast<scalar_t>(dt),
                           gi.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(),
                           b_hn.defined() ? b_hn.data_ptr<scalar_t>() : nullptr,
                           hc.data_ptr<scalar_t>(),
                           cell == kLSTM ? cbuf[t & 1].data_ptr<scalar_t>() : nullptr,
                           noise.defined() ? noise.data_ptr<scalar_t>() : nullptr,
                           hn.data_ptr<scalar_t>(),
                           cell == kLSTM ? cbuf[(t + 1) & 1].data_ptr<scalar_t>() : nullptr,
                           out.data_ptr<scalar_t>(), s1.data_ptr<scalar_t>(),
                           s2.numel() ? s2.data_ptr<scalar_t>() : nullptr);
      }
    };
    if (block_rows < B) {
      at::parallel_for(0, B, block_rows, run_rows);
    } else {
      run_rows(0, B);
    }
  });
  h = hbuf[L & 1];
  if (cell == kLSTM) c = cbuf[L & 1];
  at::Tensor cT = cell == kLSTM ? c : at::empty({0}, opt);
  return {out, h, cT, s1, s2};
}

template <typename T>
void bwd_step(int64_t cell, int64_t t, int64_t B, int64_t L, int64_t H, T dt, const T* gout,
              const T* dh, T* dc, const T* hp, const T* cp, const T* s1, const T* s2, T* dgh,
              T* dgi, T* dh_direct, T* dnoise) {
  const int64_t GH = gates_of(cell) * H;
  at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* go = gout + (b * L + t) * H;
      const T* dhb = dh + b * H;
      const T* hpb = hp + b * H;
      T* dghb = dgh + (t * B + b) * GH;
      T* ddb = dh_direct + b * H;
      T* dnz = dnoise ? dnoise + (b * L + t) * H : nullptr;
      if (cell == kRNN) {
        const T* ab = s1 + (t * B + b) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T g = dhb[j] + go[j];  // dL/dh_t
          const T a = ab[j];
          if (dnz) dnz[j] = g;
          dghb[j] = g * dt * (T(1) - a * a);
          ddb[j] = g * (T(1) - dt);
        }
      } else if (cell == kGRU) {
        const T* sb = s1 + (t * B + b) * 4 * H;
        T* dgib = dgi + (t * B + b) * GH;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T g = dhb[j] + go[j];
          const T r = sb[j], s = sb[H + j], n = sb[2 * H + j], ghn = sb[3 * H + j];
          if (dnz) dnz[j] = g;
          const T dn_pre = g * dt * (T(1) - s) * (T(1) - n * n);
          const T ds_pre = -g * dt * (n - hpb[j]) * s * (T(1) - s);
          const T dr_pre = dn_pre * ghn * r * (T(1) - r);
          dgib[j] = dr_pre;
          dgib[H + j] = ds_pre;
          dgib[2 * H + j] = dn_pre;
          dghb[j] = dr_pre;
          dghb[H + j] = ds_pre;
          dghb[2 * H + j] = dn_pre * r;
          ddb[j] = g * (T(1) - dt * (T(1) - s));
        }
      } else {
        const T* sb = s1 + (t * B + b) * 4 * H;
        const T* cb = s2 + (t * B + b) * H;
        const T* cpb = cp + b * H;
        T* dcb = dc + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T g = dhb[j] + go[j];
          const T i = sb[j], f = sb[H + j], gg = sb[2 * H + j], o = sb[3 * H + j];
          const T tc = hjseq::tanh_(cb[j]);
          const T dct = dcb[j] + g * o * (T(1) - tc * tc);  // dL/dc_t
          if (dnz) dnz[j] = dct;
          const T di = dct * dt * gg, df = dct * dt * cpb[j], dg = dct * dt * i, d_o = g * tc;
          dghb[j] = di * i * (T(1) - i);
          dghb[H + j] = df * f * (T(1) - f);
          dghb[2 * H + j] = dg * (T(1) - gg * gg);
          dghb[3 * H + j] = d_o * o * (T(1) - o);
          dcb[j] = dct * (T(1) - dt * (T(1) - f));
          ddb[j] = T(0);
        }
      }
    }
  });
}

// Gradients of (out, h_T, c_T) -> dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dnoise
// (db_* and dc0/dnoise are empty tensors where the input was None / not lstm).
std::vector<at::Tensor> backward(int64_t cell, const at::Tensor& x_, const at::Tensor& w_ih,
                                 const at::Tensor& w_hh, bool has_b_ih, bool has_b_hh,
                                 const at::Tensor& h0_, const c10::optional<at::Tensor>& c0_,
                                 bool has_noise, double dt, const at::Tensor& out_,
                                 const at::Tensor& s1_, const at::Tensor& s2_,
                                 const at::Tensor& gout_, const at::Tensor& ghT,
                                 const c10::optional<at::Tensor>& gcT) {
  const at::Tensor x = x_.contiguous(), out = out_.contiguous(), s1 = s1_.contiguous();
  const at::Tensor s2 = s2_.contiguous(), gout = gout_.contiguous(), h0 = h0_.contiguous();
  const int64_t B = x.size(0), L = x.size(1), I = x.size(2), H = w_hh.size(1);
  const int64_t GH = gates_of(cell) * H;
  const auto opt = x.options();
  // h_{t-1} for every step, time-major: [h0, out[:, :-1]]
  at::Tensor hprev = at::cat({h0.unsqueeze(0), out.transpose(0, 1).narrow(0, 0, L - 1)}, 0)
                         .contiguous();
  at::Tensor c0;
  if (cell == kLSTM) c0 = c0_.has_value() ? c0_->contiguous() : at::zeros({B, H}, opt);
  at::Tensor dgh = at::empty({L, B, GH}, opt);
  at::Tensor dgi = cell == kGRU ? at::empty({L, B, GH}, opt) : dgh;
  at::Tensor dh = ghT.contiguous().clone(), dh_direct = at::empty({B, H}, opt);
  at::Tensor dc = cell == kLSTM ? (gcT.has_value() ? gcT->contiguous().clone()
                                                   : at::zeros({B, H}, opt))
                                : at::Tensor();
  at::Tensor dnoise = has_noise ? at::empty({B, L, H}, opt) : at::empty({0}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "recurrent_scan_backward", [&] {
    for (int64_t t = L - 1; t >= 0; --t) {
      const scalar_t* cp = nullptr;
      if (cell == kLSTM) cp = t > 0 ? s2.data_ptr<scalar_t>() + (t - 1) * B * H
                                    : c0.data_ptr<scalar_t>();
      bwd_step<scalar_t>(cell, t, B, L, H, static_cast<scalar_t>(dt), gout.data_ptr<scalar_t>(),
                         dh.data_ptr<scalar_t>(), dc.defined() ? dc.data_ptr<scalar_t>() : nullptr,
                         hprev.data_ptr<scalar_t>() + t * B * H, cp, s1.data_ptr<scalar_t>(),
                         s2.numel() ? s2.data_ptr<scalar_t>() : nullptr,
                         dgh.data_ptr<scalar_t>(), dgi.data_ptr<scalar_t>(),
                         dh_direct.data_ptr<scalar_t>(),
                         has_noise ? dnoise.data_ptr<scalar_t>() : nullptr);
      at::addmm_out(dh, dh_direct, dgh[t], w_hh);
    }
  });
  const at::Tensor dgi2 = dgi.view({L * B, GH}), dgh2 = dgh.view({L * B, GH});
  at::Tensor dx = at::mm(dgi2, w_ih).view({L, B, I}).transpose(0, 1).contiguous();
  at::Tensor dw_ih = at::mm(dgi2.t(), x.transpose(0, 1).reshape({L * B, I}));
  at::Tensor dw_hh = at::mm(dgh2.t(), hprev.view({L * B, H}));
  at::Tensor db_ih = has_b_ih ? dgi2.sum(0) : at::empty({0}, opt);
  at::Tensor db_hh = has_b_hh ? dgh2.sum(0) : at::empty({0}, opt);
  at::Tensor dc0 = cell == kLSTM ? dc : at::empty({0}, opt);
  return {dx, dw_ih, dw_hh, db_ih, db_hh, dh, dc0, dnoise};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "recurrent_scan forward (CPU)");
  m.def("backward", &backward, "recurrent_scan backward (CPU)");
}
