"""Entropy landscape: analytic derivatives vs autograd, monotonicity in ε, the fold cascade."""
import math

import pytest
import torch

from hjseq.analysis.entropy import (
    attribution_entropy,
    bifurcation_diagram,
    critical_points,
    entropy_eps_derivative,
    entropy_gradient,
    entropy_hessian,
)
from hjseq.analysis.reproduce import FOLD_ATOMS

D = torch.float64


def _atoms(n=7, d=2):
    return torch.randn(n, d, dtype=D), torch.rand(n, dtype=D)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("eps", [0.1, 0.7, 3.0])
def test_gradient_and_hessian_match_autograd(d, eps):
    y, g = _atoms(d=d)
    t = 0.6
    for x in torch.randn(5, d, dtype=D):
        x = x.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(attribution_entropy(x, y, g, t, eps), x)
        assert (entropy_gradient(x.detach(), y, g, t, eps) - gr).abs().max().item() <= 1e-10
        hess = torch.autograd.functional.hessian(lambda z: attribution_entropy(z, y, g, t, eps), x.detach())
        assert (entropy_hessian(x.detach(), y, g, t, eps) - hess).abs().max().item() <= 1e-10


@pytest.mark.parametrize("eps", [0.05, 0.3, 2.0])
def test_dH_deps_is_variance_over_eps_cubed(eps):
    y, g = _atoms()
    x = torch.randn(6, 2, dtype=D)
    e = torch.tensor(eps, dtype=D, requires_grad=True)
    for xi in x:
        (dh,) = torch.autograd.grad(attribution_entropy(xi, y, g, 0.5, e), e)
        assert abs(entropy_eps_derivative(xi, y, g, 0.5, eps).item() - dh.item()) <= 1e-10 * max(1, abs(dh.item()))


def test_entropy_nondecreasing_in_eps_with_limits():
    y, g = _atoms(n=9)
    x = torch.randn(50, 2, dtype=D)
    eps = torch.logspace(-2.5, 3, 60, dtype=D).tolist()
    H = torch.stack([attribution_entropy(x, y, g, 1.0, e) for e in eps])
    assert (H[1:] - H[:-1]).min().item() >= -1e-12
    assert H[0].median().item() <= 1e-3  # → 0 away from ties (one atom wins)
    assert (H[-1] - math.log(9)).abs().max().item() <= 1e-3  # → log N
    assert H.min().item() >= 0 and H.max().item() <= math.log(9) + 1e-12
    assert all(v >= 0 for v in entropy_eps_derivative(x, y, g, 1.0, 0.4).tolist())


def test_critical_points_of_the_verify_configuration():
    # y = ±0.5, ±1.5 with g = .3, 1: maxima at the Hopf–Lax boundaries x = 0, ±2.4, minima between
    y = torch.tensor([[-1.5], [-0.5], [0.5], [1.5]], dtype=D)
    g = torch.tensor([1.0, 0.3, 0.3, 1.0], dtype=D)
    cps = critical_points(y, g, 1.0, 0.05, n_seeds=100)
    assert [c.kind for c in cps] == ["max", "min", "max", "min", "max"]
    assert [round(c.x.item(), 2) for c in cps][::2] == [-2.4, 0.0, 2.4]
    for c in cps:
        assert entropy_gradient(c.x, y, g, 1.0, 0.05).abs().max().item() <= 1e-10
    assert [c.kind for c in critical_points(y, g, 1.0, 2.0, n_seeds=100)] == ["max"]


def test_fold_cascade_5_3_1():
    y, g, t = FOLD_ATOMS
    eps_grid = torch.logspace(math.log10(0.06), math.log10(2.5), 10, dtype=D)
    bd = bifurcation_diagram(y, g, t, eps_grid, refine_tol=2e-3, n_seeds=80)
    counts = bd.counts
    assert counts[0] == 5 and counts[-1] == 1
    assert all(c % 2 == 1 and c <= 2 * len(g) - 1 for c in counts)
    assert [(f.count_below, f.count_above) for f in bd.folds] == [(5, 3), (3, 1)]
    assert abs(bd.folds[0].eps - 0.16) <= 0.01 and abs(bd.folds[1].eps - 0.84) <= 0.02
    # saddle-node: just before each fold the merging pair is a min and a max, close together
    for f in bd.folds:
        before = critical_points(y, g, t, f.eps * 0.995, n_seeds=80)
        dists = sorted((abs(a.x.item() - b.x.item()), {a.kind, b.kind}) for a, b in zip(before, before[1:]))
        assert dists[0][1] == {"min", "max"} and dists[0][0] < 0.3


def test_bad_input():
    y, g = _atoms()
    with pytest.raises(ValueError, match="eps must be > 0"):
        attribution_entropy(torch.zeros(2, dtype=D), y, g, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"g \(atom values\) must have shape"):
        entropy_gradient(torch.zeros(2, dtype=D), y, g[:3], 1.0, 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., d=2\)"):
        entropy_gradient(torch.zeros(3, dtype=D), y, g, 1.0, 0.5)
    with pytest.raises(ValueError, match="strictly increasing"):
        bifurcation_diagram(y, g, 1.0, [0.5, 0.1])
