"""selective_state_update: token-by-token decoding reproduces the full selective scan
(reference, C++ CPU and Triton backends), the Triton kernel matches the reference in the
heads layout (tied head dims, state_batch_indices, in place), plus its argument checks."""
from __future__ import annotations

import pytest
import torch

from _gpu_testutil import DEVICE, max_err, ref_backend, triton_backend
from hjseq.ops.selective_state_update import selective_state_update


@pytest.mark.parametrize("backend", ["ref", "cpu", "triton"])
@pytest.mark.parametrize("scheme,groups", [("euler_b", None), ("zoh", 2)])
def test_decoding_matches_full_scan(backend, scheme, groups):
    if backend == "triton":
        triton_backend("selective_state_update")
    if backend == "cpu" and DEVICE != "cpu":
        pytest.skip("the C++ backend runs on CPU tensors")
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 6, 5, 6

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE)

    bc = (b, n, L) if groups is None else (b, groups, n, L)
    u, delta, z, B, C = r(b, d, L), r(b, d, L), r(b, d, L), r(*bc), r(*bc)
    A, D, bias, h0 = -r(d, n).abs(), r(d), r(d), r(b, d, n)
    y, hT = ref_backend("selective_scan")(u, delta, A, B, C, D, z, bias, True, h0, True, scheme)
    h, ys = h0, []
    for t in range(L):
        h_in, h_copy = h, h.clone()
        yt, h = selective_state_update(h, u[..., t], delta[..., t], A, B[..., t], C[..., t], D,
                                       z[..., t], bias, True, scheme, backend=backend)
        ys.append(yt)
        assert torch.equal(h_in, h_copy)  # the input state is not modified in place
    assert max_err(torch.stack(ys, -1), y) < 1e-12
    assert max_err(h, hT) < 1e-12


@pytest.mark.parametrize("tied,indexed,inplace", [(False, False, False), (True, True, True),
                                                  (False, True, False), (True, False, True)])
@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
def test_triton_heads_layout(tied, indexed, inplace, scheme):
    upd = triton_backend("selective_state_update")
    g = torch.Generator().manual_seed(1)
    b, H, P, N, G, S = 3, 4, 5, 6, 2, 7

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE)

    if tied:
        A = (-r(H, 1, 1).abs()).expand(H, P, N)
        dt, D, bias = r(b, H, 1).expand(b, H, P), r(H, 1).expand(H, P), r(H, 1).expand(H, P)
    else:
        A, dt, D, bias = -r(H, P, N).abs(), r(b, H, P), r(H, P), r(H, P)
    x, z, B, C = r(b, H, P), r(b, H, P), r(b, G, N), r(b, G, N)
    state = r(S if indexed else b, H, P, N)
    idx = torch.tensor([4, 0, 6], device=DEVICE) if indexed else None
    want_out, want_state = ref_backend("selective_state_update")(
        state.clone(), x, dt, A, B, C, D, z, bias, True, scheme, state_batch_indices=idx)
    keep = state.clone()
    out, new = upd(state, x, dt, A, B, C, D, z, bias, True, scheme, state_batch_indices=idx,
                   inplace=inplace)
    assert max_err(out, want_out) < 1e-12
    assert max_err(new, want_state) < 1e-12
    assert (new is state) if inplace else torch.equal(state, keep)


def test_state_update_bf16_input_fp32_state():
    upd = triton_backend("selective_state_update")
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 4, 3, generator=g).to(DEVICE)
    keep = state.clone()
    x, dt = (torch.randn(2, 4, generator=g).to(DEVICE, torch.bfloat16) for _ in range(2))
    A = -torch.rand(4, 3, generator=g).to(DEVICE)
    B, C = (torch.randn(2, 3, generator=g).to(DEVICE, torch.bfloat16) for _ in range(2))
    out, new = upd(state, x, dt, A, B, C, dt_softplus=True)
    ref_out, ref_new = ref_backend("selective_state_update")(state, x, dt, A, B, C,
                                                             dt_softplus=True)
    assert out.dtype == torch.bfloat16 and new.dtype == torch.float32
    assert torch.equal(state, keep)
    assert max_err(new, ref_new) < 1e-5
    assert max_err(out, ref_out) <= 1e-2 * max(1.0, ref_out.float().abs().max().item())


def test_state_update_errors_name_the_argument():
    upd = ref_backend("selective_state_update")
    s = torch.zeros(2, 4, 3)
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"A must have shape \(D, N\) = \(4, 3\)"):
        upd(s, x, x, torch.zeros(4, 2), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="B must be"):
        upd(s, x, x, torch.zeros(4, 3), torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="scheme"):
        upd(s, x, x, torch.zeros(4, 3), torch.zeros(2, 3), torch.zeros(2, 3), scheme="rk4")
