// torch binding of the CUDA linear scan in linear_scan.cu (which has no torch headers).
// Built by hjseq/ops/linear_scan/cuda.py only where a CUDA torch and nvcc exist. The
// Python side makes a and b contiguous and of one dtype, h0/dhT contiguous float32.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <vector>

#include "cuda/linear_scan.h"

namespace {

void check_input(const at::Tensor &t, const char *name, at::ScalarType dtype) {
    TORCH_CHECK(t.is_cuda(), "linear_scan cuda: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.is_contiguous(), "linear_scan cuda: ", name, " must be contiguous");
    TORCH_CHECK(t.scalar_type() == dtype, "linear_scan cuda: ", name, " must be ", dtype,
                ", got ", t.scalar_type());
}

HJLSParams base_params(const at::Tensor &a, const at::Tensor &b) {
    TORCH_CHECK(b.dim() == 3 && a.sizes() == b.sizes(),
                "linear_scan cuda: a and b must both be (B, D, L)");
    check_input(a, "a", b.scalar_type());
    check_input(b, "b", b.scalar_type());
    HJLSParams p{};
    p.batch = b.size(0);
    p.dim = b.size(1);
    p.seqlen = b.size(2);
    p.n_chunks = (p.seqlen + HJSS_CHUNK - 1) / HJSS_CHUNK;
    switch (b.scalar_type()) {
        case at::kFloat: p.dtype = HJSS_F32; break;
        case at::kHalf: p.dtype = HJSS_F16; break;
        case at::kBFloat16: p.dtype = HJSS_BF16; break;
        default: TORCH_CHECK(false, "linear_scan cuda: float32/float16/bfloat16 only, got ",
                             b.scalar_type());
    }
    p.a = a.data_ptr();
    p.b = b.data_ptr();
    return p;
}

// Returns [h, final_state, chunk_states].
std::vector<at::Tensor> forward(const at::Tensor &a, const at::Tensor &b,
                                const std::optional<at::Tensor> &h0) {
    const c10::cuda::CUDAGuard guard(b.device());
    HJLSParams p = base_params(a, b);
    auto f32 = b.options().dtype(at::kFloat);
    if (h0) check_input(*h0, "initial_state", at::kFloat);
    at::Tensor out = at::empty_like(b);
    at::Tensor hT = at::empty({p.batch, p.dim}, f32);
    at::Tensor states = at::empty({p.batch, p.dim, p.n_chunks}, f32);
    p.has_h0 = h0.has_value();
    p.h0 = h0 ? h0->data_ptr<float>() : nullptr;
    p.out = out.data_ptr();
    p.hT = hT.data_ptr<float>();
    p.states = states.data_ptr<float>();
    const int err = hjls_forward(&p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "linear_scan cuda forward failed: ",
                cudaGetErrorString(static_cast<cudaError_t>(err)));
    return {out, hT, states};
}

// Returns [da, db, d_initial_state].
std::vector<at::Tensor> backward(const at::Tensor &a, const at::Tensor &b,
                                 const at::Tensor &states, const at::Tensor &dout,
                                 const std::optional<at::Tensor> &dhT) {
    const c10::cuda::CUDAGuard guard(b.device());
    HJLSParams p = base_params(a, b);
    check_input(states, "chunk states", at::kFloat);
    check_input(dout, "grad of the output", b.scalar_type());
    if (dhT) check_input(*dhT, "grad of the final state", at::kFloat);
    at::Tensor da = at::empty_like(b), db = at::empty_like(b);
    at::Tensor dh0 = at::empty({p.batch, p.dim}, b.options().dtype(at::kFloat));
    p.states = states.data_ptr<float>();
    p.dout = dout.data_ptr();
    p.has_dhT = dhT.has_value();
    p.dhT = dhT ? dhT->data_ptr<float>() : nullptr;
    p.da = da.data_ptr();
    p.db = db.data_ptr();
    p.dh0 = dh0.data_ptr<float>();
    const int err = hjls_backward(&p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "linear_scan cuda backward failed: ",
                cudaGetErrorString(static_cast<cudaError_t>(err)));
    return {da, db, dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", &forward, "linear scan forward (CUDA)");
    m.def("backward", &backward, "linear scan backward (CUDA)");
}
