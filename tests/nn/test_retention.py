"""HJRetention (a spec on HeadLinearSSM, no kernel of its own) against RetNet's parallel form."""
import pytest
import torch

from hjseq.nn.retention import HJRetention

f64 = torch.float64


def parallel_retention(m: HJRetention, x):
    """``(Q Kᵀ/√d ⊙ D) V`` per head with the decay mask D_nm = γ^{n−m} (n ≥ m), 0 otherwise."""
    b, L, _ = x.shape
    q, k, v = (x @ m.qkv.weight.T).unflatten(-1, (3, m.n_heads, m.d_head)).unbind(2)
    n = torch.arange(L, dtype=f64)
    gamma = torch.exp(m.log_gamma.to(f64))
    D = torch.where(n[:, None] >= n[None, :], gamma[:, None, None] ** (n[:, None] - n[None, :]),
                    torch.zeros((), dtype=f64))                          # (H, L, L)
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / m.d_head ** 0.5 * D
    y = torch.einsum("bhnm,bmhd->bnhd", scores, v)
    return y.flatten(-2) @ m.out_proj.weight.T


def test_retention_matches_parallel_form_on_every_path():
    m = HJRetention(12, n_heads=3).double()
    x = torch.randn(2, 37, 12, dtype=f64)
    want = parallel_retention(m, x)
    assert m.fused_path() == "ssd"
    out, S = m(x, return_final_state=True)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    m.backend = "loop"
    out_loop, S_loop = m(x, return_final_state=True)
    torch.testing.assert_close(out_loop, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(S_loop, S, rtol=1e-10, atol=1e-12)
    m.backend = "auto"
    a, st = m(x[:, :20], return_final_state=True)
    y, st = m.step(x[:, 20], st)
    torch.testing.assert_close(torch.cat([a, y[:, None]], 1), want[:, :21], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="n_heads"):
        HJRetention(10, n_heads=3)
