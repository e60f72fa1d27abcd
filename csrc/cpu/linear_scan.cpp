// linear_scan on the CPU: h_t = a_t * h_{t-1} + b_t over the last axis of (B, D, L).
//
// The recursion is sequential in t, so the kernel vectorises across rows: a block of kRows
// rows x kSteps time steps is transposed into an L1 tile (time-major), scanned with one
// SIMD lane per row, and transposed back. Rows are contiguous along L in memory, so every
// load/store streams runs of kSteps elements. OpenMP (at::parallel_for) splits the
// (segment, row block) pairs. Accumulation is in acc_t (float; double for double).
//
// Segments: cu (S+1,) int64 offsets along L. Without varlen cu = [0, L]; with varlen the
// batch is 1 and the state restarts at each offset. State index = s * R + row, R = B*D.
//
// Backward (dh flows backwards):  dh_t = g_t + a_{t+1} dh_{t+1}  (dh_{end} = g_end + gT),
//   db_t = dh_t,  da_t = dh_t h_{t-1}  (h_{start-1} = h0),  dh0 = a_start dh_start.
// h_{t-1} is read from the forward output (no recompute).
#include "common.h"

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kRows = 16;
constexpr int64_t kSteps = 64;

template <typename scalar_t>
void forward_kernel(const scalar_t* a, const scalar_t* b, scalar_t* out, const int64_t* cu,
                    int64_t S, int64_t R, int64_t L, const hjseq::acc_t<scalar_t>* h0,
                    hjseq::acc_t<scalar_t>* hT) {
  using acc = hjseq::acc_t<scalar_t>;
  const int64_t nblk = (R + kRows - 1) / kRows;
  at::parallel_for(0, S * nblk, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc A[kSteps][kRows];
    alignas(64) acc X[kSteps][kRows];
    alignas(64) acc h[kRows];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t s = job / nblk, r0 = (job % nblk) * kRows;
      const int64_t nr = std::min(kRows, R - r0);
      const int64_t lo = cu[s], hi = cu[s + 1];
      for (int64_t r = 0; r < kRows; ++r) h[r] = (h0 && r < nr) ? h0[s * R + r0 + r] : acc(0);
      for (int64_t t0 = lo; t0 < hi; t0 += kSteps) {
        const int64_t T = std::min(kSteps, hi - t0);
        for (int64_t r = 0; r < kRows; ++r) {
          if (r < nr) {
            const scalar_t* ar = a + (r0 + r) * L + t0;
            const scalar_t* br = b + (r0 + r) * L + t0;
            for (int64_t t = 0; t < T; ++t) {
              A[t][r] = hjseq::to_acc(ar[t]);
              X[t][r] = hjseq::to_acc(br[t]);
            }
          } else {
            for (int64_t t = 0; t < T; ++t) A[t][r] = X[t][r] = acc(0);
          }
        }
        for (int64_t t = 0; t < T; ++t) {
#pragma omp simd
          for (int64_t r = 0; r < kRows; ++r) {
            h[r] = A[t][r] * h[r] + X[t][r];
            X[t][r] = h[r];
          }
        }
        for (int64_t r = 0; r < nr; ++r) {
          scalar_t* o = out + (r0 + r) * L + t0;
          for (int64_t t = 0; t < T; ++t) o[t] = hjseq::from_acc<scalar_t>(X[t][r]);
        }
      }
      for (int64_t r = 0; r < nr; ++r) hT[s * R + r0 + r] = h[r];
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* a, const scalar_t* hout, const scalar_t* g,
                     const hjseq::acc_t<scalar_t>* gT, const hjseq::acc_t<scalar_t>* h0,
                     const int64_t* cu, int64_t S, int64_t R, int64_t L, scalar_t* da,
                     scalar_t* db, hjseq::acc_t<scalar_t>* dh0) {
  using acc = hjseq::acc_t<scalar_t>;
  const int64_t nblk = (R + kRows - 1) / kRows;
  at::parallel_for(0, S * nblk, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc A[kSteps][kRows];
    alignas(64) acc G[kSteps][kRows];
    alignas(64) acc P[kSteps][kRows];  // h_{t-1}, then da_t
    alignas(64) acc carry[kRows];      // a_{t+1} dh_{t+1} (gT at the segment end)
    for (int64_t job = begin; job < end; ++job) {
      const int64_t s = job / nblk, r0 = (job % nblk) * kRows;
      const int64_t nr = std::min(kRows, R - r0);
      const int64_t lo = cu[s], hi = cu[s + 1];
      for (int64_t r = 0; r < kRows; ++r) carry[r] = (gT && r < nr) ? gT[s * R + r0 + r] : acc(0);
      for (int64_t t1 = hi; t1 > lo; t1 -= kSteps) {
        const int64_t t0 = std::max(lo, t1 - kSteps), T = t1 - t0;
        for (int64_t r = 0; r < kRows; ++r) {
          if (r < nr) {
            const int64_t row = (r0 + r) * L;
            for (int64_t t = 0; t < T; ++t) {
              A[t][r] = hjseq::to_acc(a[row + t0 + t]);
              G[t][r] = hjseq::to_acc(g[row + t0 + t]);
            }
            P[0][r] = t0 > lo ? hjseq::to_acc(hout[row + t0 - 1])
                              : (h0 ? h0[s * R + r0 + r] : acc(0));
            for (int64_t t = 1; t < T; ++t) P[t][r] = hjseq::to_acc(hout[row + t0 + t - 1]);
          } else {
            for (int64_t t = 0; t < T; ++t) A[t][r] = G[t][r] = P[t][r] = acc(0);
          }
        }
        for (int64_t t = T - 1; t >= 0; --t) {
#pragma omp simd
          for (int64_t r = 0; r < kRows; ++r) {
            const acc dh = G[t][r] + carry[r];
            G[t][r] = dh;
            P[t][r] = dh * P[t][r];
            carry[r] = A[t][r] * dh;
          }
        }
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t row = (r0 + r) * L + t0;
          for (int64_t t = 0; t < T; ++t) {
            db[row + t] = hjseq::from_acc<scalar_t>(G[t][r]);
            da[row + t] = hjseq::from_acc<scalar_t>(P[t][r]);
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r) dh0[s * R + r0 + r] = carry[r];
    }
  });
}

at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// a, b: (B, D, L); h0: (S, B*D) acc dtype or None; cu: (S+1,) int64.
// Returns h (B, D, L) in b's dtype and hT (S, B*D) in the accumulation dtype.
std::vector<at::Tensor> forward(const at::Tensor& a_, const at::Tensor& b_,
                                const c10::optional<at::Tensor>& h0_, const at::Tensor& cu_) {
  TORCH_CHECK(a_.dim() == 3 && a_.sizes() == b_.sizes(), "linear_scan: a, b must be (B, D, L)");
  TORCH_CHECK(a_.scalar_type() == b_.scalar_type(), "linear_scan: a, b must share a dtype");
  const at::Tensor a = a_.contiguous(), b = b_.contiguous();
  const at::Tensor cu = cu_.to(at::kLong).contiguous();
  const int64_t S = cu.numel() - 1, R = a.size(0) * a.size(1), L = a.size(2);
  const auto acc = acc_type(a.scalar_type());
  at::Tensor h0;
  if (h0_.has_value()) {
    h0 = h0_->to(acc).contiguous();
    TORCH_CHECK(h0.numel() == S * R, "linear_scan: initial_state has ", h0.numel(),
                " entries, expected ", S * R);
  }
  at::Tensor out = at::empty_like(b);
  at::Tensor hT = at::empty({S, R}, a.options().dtype(acc));
  HJSEQ_DISPATCH_FLOAT_TYPES(a.scalar_type(), "linear_scan_forward", [&] {
    using accT = hjseq::acc_t<scalar_t>;
    forward_kernel<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), cu.data_ptr<int64_t>(), S, R, L,
                             h0.defined() ? h0.data_ptr<accT>() : nullptr, hT.data_ptr<accT>());
  });
  return {out, hT};
}

// Returns da, db (B, D, L) and dh0 (S, B*D) in the accumulation dtype.
std::vector<at::Tensor> backward(const at::Tensor& a_, const at::Tensor& h_,
                                 const at::Tensor& g_, const c10::optional<at::Tensor>& gT_,
                                 const c10::optional<at::Tensor>& h0_, const at::Tensor& cu_) {
  const at::Tensor a = a_.contiguous(), h = h_.to(a.scalar_type()).contiguous();
  const at::Tensor g = g_.to(a.scalar_type()).contiguous();
  const at::Tensor cu = cu_.to(at::kLong).contiguous();
  const int64_t S = cu.numel() - 1, R = a.size(0) * a.size(1), L = a.size(2);
  const auto acc = acc_type(a.scalar_type());
  at::Tensor gT, h0;
  if (gT_.has_value()) gT = gT_->to(acc).contiguous();
  if (h0_.has_value()) h0 = h0_->to(acc).contiguous();
  at::Tensor da = at::empty_like(a), db = at::empty_like(a);
  at::Tensor dh0 = at::empty({S, R}, a.options().dtype(acc));
  HJSEQ_DISPATCH_FLOAT_TYPES(a.scalar_type(), "linear_scan_backward", [&] {
    using accT = hjseq::acc_t<scalar_t>;
    backward_kernel<scalar_t>(a.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                              g.data_ptr<scalar_t>(), gT.defined() ? gT.data_ptr<accT>() : nullptr,
                              h0.defined() ? h0.data_ptr<accT>() : nullptr,
                              cu.data_ptr<int64_t>(), S, R, L, da.data_ptr<scalar_t>(),
                              db.data_ptr<scalar_t>(), dh0.data_ptr<accT>());
  });
  return {da, db, dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "linear_scan forward (CPU)");
  m.def("backward", &backward, "linear_scan backward (CPU)");
}
