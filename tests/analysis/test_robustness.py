"""Curvature ∇²f = Cov_π(W)/ε, the bound max|W|²/ε, and gradient attacks against ε."""
import pytest
import torch

from hjseq.analysis.reproduce import SMALL, hessian_bound_checks, robustness_curves
from hjseq.analysis.robustness import check_hessian_bound, hessian_bound, lse_hessian, worst_case_change
from hjseq.nn.lse import LSELayer

D = torch.float64


def test_hessian_matches_autograd():
    layer = LSELayer(3, 9, 0.3, dtype=D)
    with torch.no_grad():
        layer.weight.normal_()
    for x in torch.randn(4, 3, dtype=D):
        ref = torch.autograd.functional.hessian(lambda z: layer(z), x)
        assert (lse_hessian(layer, x) - ref).abs().max().item() <= 1e-12


def test_bound_never_violated_random_and_trained():
    res = hessian_bound_checks(SMALL)
    assert res["violations"] == 0
    assert 0 < res["max_ratio"] <= 1
    trained = res["trained"]
    assert all(r["test_rmse"] < 0.25 for r in trained)  # the fits are real fits of |x|
    # smaller ε: sharper (higher curvature) models
    assert trained[0]["max_hessian"] > trained[-1]["max_hessian"]


def test_bound_is_attained_for_two_antipodal_atoms():
    # W = ±w, b = 0: at x = 0, π = (½, ½), Cov = |w|² ⇒ ‖∇²f‖ = |w|²/ε exactly
    layer = LSELayer(2, 2, 0.25, dtype=D)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=D))
        layer.bias.zero_()
    chk = check_hessian_bound(layer, torch.zeros(1, 2, dtype=D))
    assert chk.max_norm == pytest.approx(hessian_bound(layer), rel=1e-14) and not chk.violated


def test_attack_finds_the_linear_worst_case():
    # for a linear map the worst change over ‖δ‖ ≤ r is r·‖A‖₂
    A = torch.randn(3, 5, dtype=D)
    x = torch.randn(4, 5, dtype=D)
    w = worst_case_change(lambda z: z @ A.T, x, 0.2, steps=40)
    assert torch.allclose(w, torch.full((4,), 0.2 * torch.linalg.matrix_norm(A, 2).item(), dtype=D), rtol=1e-4)


def test_robustness_curves_against_eps():
    res = robustness_curves(eps_list=[0.02, 0.1, 0.5, 2.0])
    grad = [r["max_change"] for r in res["lse_gradient"]]
    att = [r["max_change"] for r in res["attention_output"]]
    out = [r["max_change"] for r in res["lse_output"]]
    assert all(a >= b for a, b in zip(grad, grad[1:]))  # sharper at small ε
    assert all(r["max_change"] <= r["bound"] + 1e-12 for r in res["lse_gradient"])  # Lipschitz ≤ max|W|²/ε
    assert all(o <= res["radius"] * (1 + 1e-9) for o in out)  # f is max|W| = 1 Lipschitz at every ε
    assert att[0] > 2 * att[-1]


def test_bad_input():
    layer = LSELayer(2, 3, 0.0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        lse_hessian(layer, torch.zeros(2))
    with pytest.raises(ValueError, match="radius must be > 0"):
        worst_case_change(lambda z: z, torch.zeros(1, 2), 0.0)
