// torch binding of the CUDA selective scan in selective_scan.cu (which has no torch
// headers). Built by hjseq/ops/selective_scan/cuda.py through hjseq.ops._build only where
// a CUDA build of torch and nvcc exist. The Python side makes every tensor contiguous,
// casts delta/z/B/C to u's dtype and A/D/delta_bias/initial_state to float32.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <vector>

#include "cuda/selective_scan.h"

namespace {

int dtype_code(const at::Tensor &u) {
    switch (u.scalar_type()) {
        case at::kFloat: return HJSS_F32;
        case at::kHalf: return HJSS_F16;
        case at::kBFloat16: return HJSS_BF16;
        default: TORCH_CHECK(false, "selective_scan cuda: u must be float32/float16/bfloat16, got ",
                             u.scalar_type());
    }
    return -1;
}

void check_input(const at::Tensor &t, const char *name, at::ScalarType dtype) {
    TORCH_CHECK(t.is_cuda(), "selective_scan cuda: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.is_contiguous(), "selective_scan cuda: ", name, " must be contiguous");
    TORCH_CHECK(t.scalar_type() == dtype, "selective_scan cuda: ", name, " must be ", dtype,
                ", got ", t.scalar_type());
}

template <typename T>
const T *opt_ptr(const std::optional<at::Tensor> &t) {
    return t.has_value() ? static_cast<const T *>(t->data_ptr()) : nullptr;
}

HJSSParams base_params(const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
                       const at::Tensor &B, const at::Tensor &C,
                       const std::optional<at::Tensor> &D, const std::optional<at::Tensor> &z,
                       const std::optional<at::Tensor> &bias, bool softplus, bool zoh) {
    TORCH_CHECK(u.dim() == 3 && B.dim() == 4 && C.dim() == 4 && A.dim() == 2,
                "selective_scan cuda: expected u (B, D, L), A (D, N), B and C (B, G, N, L)");
    const auto dt = u.scalar_type();
    check_input(u, "u", dt);
    check_input(delta, "delta", dt);
    check_input(B, "B", dt);
    check_input(C, "C", dt);
    check_input(A, "A", at::kFloat);
    if (D) check_input(*D, "D", at::kFloat);
    if (z) check_input(*z, "z", dt);
    if (bias) check_input(*bias, "delta_bias", at::kFloat);
    HJSSParams p{};
    p.batch = u.size(0);
    p.dim = u.size(1);
    p.seqlen = u.size(2);
    p.dstate = A.size(1);
    p.n_groups = B.size(1);
    TORCH_CHECK(p.dstate <= HJSS_MAX_N, "selective_scan cuda: d_state must be <= ", HJSS_MAX_N);
    TORCH_CHECK(p.dim % p.n_groups == 0, "selective_scan cuda: groups must divide D");
    p.n_chunks = (p.seqlen + HJSS_CHUNK - 1) / HJSS_CHUNK;
    p.dtype = dtype_code(u);
    p.zoh = zoh;
    p.delta_softplus = softplus;
    p.has_D = D.has_value();
    p.has_z = z.has_value();
    p.has_bias = bias.has_value();
    p.u = u.data_ptr();
    p.delta = delta.data_ptr();
    p.z = z ? z->data_ptr() : nullptr;
    p.B = B.data_ptr();
    p.C = C.data_ptr();
    p.A = A.data_ptr<float>();
    p.D = opt_ptr<float>(D);
    p.bias = opt_ptr<float>(bias);
    return p;
}

// Returns [out, final_state, chunk_states, y_before_gate (empty without z)].
std::vector<at::Tensor> forward(const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
                                const at::Tensor &B, const at::Tensor &C,
                                const std::optional<at::Tensor> &D,
                                const std::optional<at::Tensor> &z,
                                const std::optional<at::Tensor> &bias, bool softplus,
                                const std::optional<at::Tensor> &h0, bool zoh) {
    const c10::cuda::CUDAGuard guard(u.device());
    HJSSParams p = base_params(u, delta, A, B, C, D, z, bias, softplus, zoh);
    auto f32 = u.options().dtype(at::kFloat);
    if (h0) check_input(*h0, "initial_state", at::kFloat);
    at::Tensor out = at::empty_like(u);
    at::Tensor ypre = z ? at::empty_like(u) : at::empty({0}, u.options());
    at::Tensor hT = at::empty({p.batch, p.dim, p.dstate}, f32);
    at::Tensor states = at::empty({p.batch, p.dim, p.n_chunks, p.dstate}, f32);
    p.has_h0 = h0.has_value();
    p.h0 = opt_ptr<float>(h0);
    p.out = out.data_ptr();
    p.ypre = z ? ypre.data_ptr() : nullptr;
    p.hT = hT.data_ptr<float>();
    p.states = states.data_ptr<float>();
    const int err = hjss_forward(&p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "selective_scan cuda forward failed: ",
                cudaGetErrorString(static_cast<cudaError_t>(err)));
    return {out, hT, states, ypre};
}

// Returns [du, ddelta, dA_part (B, D, N), dB, dC (fp32), dD_part, dz, dbias_part, dh0].
std::vector<at::Tensor> backward(const at::Tensor &u, const at::Tensor &delta, const at::Tensor &A,
                                 const at::Tensor &B, const at::Tensor &C,
                                 const std::optional<at::Tensor> &D,
                                 const std::optional<at::Tensor> &z,
                                 const std::optional<at::Tensor> &bias, bool softplus, bool zoh,
                                 const at::Tensor &states, const at::Tensor &ypre,
                                 const at::Tensor &dout, const std::optional<at::Tensor> &dhT) {
    const c10::cuda::CUDAGuard guard(u.device());
    HJSSParams p = base_params(u, delta, A, B, C, D, z, bias, softplus, zoh);
    auto f32 = u.options().dtype(at::kFloat);
    check_input(states, "chunk states", at::kFloat);
    check_input(dout, "grad of the output", u.scalar_type());
    if (dhT) check_input(*dhT, "grad of the final state", at::kFloat);
    at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
    at::Tensor dz = z ? at::empty_like(u) : at::empty({0}, u.options());
    at::Tensor dB = at::zeros(B.sizes(), f32), dC = at::zeros(C.sizes(), f32);
    at::Tensor dA_part = at::empty({p.batch, p.dim, p.dstate}, f32);
    at::Tensor dD_part = at::empty({p.batch, p.dim}, f32);
    at::Tensor dbias_part = at::empty({p.batch, p.dim}, f32);
    at::Tensor dh0 = at::empty({p.batch, p.dim, p.dstate}, f32);
    p.states = states.data_ptr<float>();
    p.ypre = z ? const_cast<void *>(ypre.data_ptr()) : nullptr;
    p.dout = dout.data_ptr();
    p.has_dhT = dhT.has_value();
    p.dhT = opt_ptr<float>(dhT);
    p.du = du.data_ptr();
    p.ddelta = ddelta.data_ptr();
    p.dz = z ? dz.data_ptr() : nullptr;
    p.dB = dB.data_ptr<float>();
    p.dC = dC.data_ptr<float>();
    p.dA_part = dA_part.data_ptr<float>();
    p.dD_part = dD_part.data_ptr<float>();
    p.dbias_part = dbias_part.data_ptr<float>();
    p.dh0 = dh0.data_ptr<float>();
    const int err = hjss_backward(&p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "selective_scan cuda backward failed: ",
                cudaGetErrorString(static_cast<cudaError_t>(err)));
    return {du, ddelta, dA_part, dB, dC, dD_part, dz, dbias_part, dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", &forward, "selective scan forward (CUDA)");
    m.def("backward", &backward, "selective scan backward (CUDA)");
}
