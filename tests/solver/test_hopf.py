import math

import pytest
import torch

import hjseq.hopf as base
from hjseq.solver import hopf as H

F64 = torch.float64


def test_discrete_closed_forms_are_the_lead_module_not_copies():
    for name in ("hopf_cole", "hopf_lax", "gibbs_weights", "lse", "affine_from_atoms",
                 "atoms_from_affine", "heat_constant", "atom_costs"):
        assert getattr(H, name) is getattr(base, name)


@pytest.mark.parametrize("d", [1, 2])
def test_continuous_hopf_cole_quadratic_data_closed_form(d):
    # g = a|y|²/2 ⇒ u_ε = a|x|²/(2(1+2at)) + (εd/2) log(1+2at) (Gaussian convolution)
    a, t, eps = 0.8, 0.3, 0.15
    x = torch.randn(10, d, dtype=F64)
    u = H.hopf_cole_continuous(x, lambda y: a * (y * y).sum(-1) / 2, t, eps, [-6.0] * d,
                               [6.0] * d, n_panels=24)
    exact = a * (x * x).sum(-1) / (2 * (1 + 2 * a * t)) + eps * d / 2 * math.log(1 + 2 * a * t)
    assert (u - exact).abs().max() < 1e-10


def test_continuous_hopf_lax_matches_closed_form_for_abs():
    t = 0.3
    x = torch.linspace(-1, 1, 21, dtype=F64)[:, None]
    exact = torch.where(x[:, 0].abs() >= 2 * t, x[:, 0].abs() - t, x[:, 0] ** 2 / (4 * t))
    u = H.hopf_lax_continuous(x, lambda y: y.abs().sum(-1), t, [-4.0], [4.0], n=8001)
    assert (u - exact).abs().max() < 1e-5


def test_moreau_envelope_prox_and_soft_prox():
    torch.manual_seed(3)
    y, g = torch.randn(6, 2, dtype=F64), torch.rand(6, dtype=F64)
    x = torch.randn(30, 2, dtype=F64)
    t = 0.4
    env = H.moreau_envelope(x, y, g, lam=2 * t)
    assert torch.equal(env, H.hopf_lax(x, y, g, t))
    px = H.prox(x, y, g, lam=2 * t)
    assert torch.allclose(g[(px[:, None] == y).all(-1).int().argmax(-1)]
                          + ((x - px) ** 2).sum(-1) / (4 * t), env)
    # soft prox = x − 2t ∇u_ε (autograd), and → prox as ε → 0
    eps = 0.3
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(H.hopf_cole(xr, y, g, t, eps).sum(), xr)
    assert torch.allclose(H.soft_prox(x, y, g, t, eps), x - 2 * t * grad, atol=1e-12)
    assert torch.allclose(H.soft_prox(x, y, g, t, 1e-4), px, atol=1e-6)
    assert torch.equal(H.soft_prox(x, y, g, t, 0.0), px)


def test_quadrature_rule_and_errors():
    nodes, w = H.gauss_legendre_nodes(-1.0, 2.0, 3, order=8, breakpoints=[0.0, 5.0])
    assert w.sum().item() == pytest.approx(3.0, abs=1e-14)
    assert (nodes ** 7 * w).sum().item() == pytest.approx((2 ** 8 - 1) / 8, rel=1e-12)
    with pytest.raises(ValueError, match="hi > lo"):
        H.gauss_legendre_nodes(1.0, 0.0, 3)
    with pytest.raises(ValueError, match="last dimension"):
        H.hopf_cole_continuous(torch.zeros(3, 2, dtype=F64), lambda y: y.sum(-1), 1.0, 0.1,
                               [-1.0], [1.0])
    with pytest.raises(ValueError, match="eps > 0"):
        H.hopf_cole_continuous(torch.zeros(3, 1, dtype=F64), lambda y: y.sum(-1), 1.0, 0.0,
                               [-1.0], [1.0])
    with pytest.raises(ValueError, match="lam"):
        H.moreau_envelope(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), 0.0)
