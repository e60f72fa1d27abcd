"""LSELayer: the Hopf–Cole identity, the atom map, the tropical gap and softplus."""
import math

import pytest
import torch
import torch.nn.functional as F

from hjseq import hopf
from hjseq.nn.lse import LSELayer

D = torch.float64


def _layer(d=3, n=7, eps=0.3):
    layer = LSELayer(d, n, eps, dtype=D)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("eps", [1.0, 0.5, 0.2, 0.1, 0.05])
@pytest.mark.parametrize("t", [0.25, 1.0, 3.0])
def test_hopf_cole_identity(eps, t):
    # f_ε(x) + u_ε(x, t) = |x|²/(4t), u_ε from the atoms given by the inverse map
    layer = _layer(eps=eps)
    x = torch.randn(200, 3, dtype=D)
    y, g = layer.atoms(t)
    u = hopf.hopf_cole(x, y, g, t, eps)
    err = (layer(x) + u - (x * x).sum(-1) / (4 * t)).abs().max().item()
    assert err <= 1e-12


def test_authors_verify_table():
    # the paper's verify table: y = [−1.5, −.5, .5, 1.5], g = [1, .3, .3, 1], t = 1
    y = torch.tensor([[-1.5], [-0.5], [0.5], [1.5]], dtype=D)
    g = torch.tensor([1.0, 0.3, 0.3, 1.0], dtype=D)
    x = torch.linspace(-2.5, 2.5, 500, dtype=D)[:, None]
    for eps in [1.0, 0.5, 0.2, 0.1, 0.05]:
        layer = LSELayer.from_atoms(y, g, t=1.0, eps=eps)
        err = (layer(x) + hopf.hopf_cole(x, y, g, 1.0, eps) - x[:, 0] ** 2 / 4).abs().max()
        assert err <= 1e-12


def test_atom_round_trip_exact():
    layer = _layer()
    for t in [0.5, 1.0, 2.0]:  # powers of two: the maps are exact in floating point
        y, g = layer.atoms(t)
        W, b = hopf.affine_from_atoms(y, g, t)
        assert torch.equal(W, layer.weight.detach())
        assert (b - layer.bias).abs().max().item() <= 4 * torch.finfo(D).eps * b.abs().max().item()
    back = LSELayer.from_atoms(*layer.atoms(1.0), t=1.0, eps=layer.eps)
    assert torch.equal(back.weight, layer.weight)
    assert (back.bias - layer.bias).abs().max().item() <= 1e-15


@pytest.mark.parametrize("eps", [2.0, 0.5, 0.1, 0.01])
def test_tropical_gap(eps):
    # 0 ≤ f_ε − max_j s_j ≤ ε log N
    layer = _layer(d=2, n=9, eps=eps)
    x = torch.randn(500, 2, dtype=D)
    gap = layer(x) - layer.logits(x).max(-1).values
    assert gap.min().item() >= -1e-14  # rounding of ε·(max/ε) only
    assert gap.max().item() <= layer.tropical_gap_bound() + 1e-14
    assert layer.tropical_gap_bound() == pytest.approx(eps * math.log(9))


def test_eps_zero_is_exact_max():
    layer = _layer(eps=0.0)
    x = torch.randn(50, 3, dtype=D)
    assert torch.equal(layer(x), layer.logits(x).max(-1).values)
    pi = layer.attribution_weights(x)
    assert torch.equal(pi.argmax(-1), layer.logits(x).argmax(-1))
    assert torch.equal(pi.sum(-1), torch.ones(50, dtype=D))


@pytest.mark.parametrize("eps", [1.0, 0.3])
def test_softplus_at_two_atoms(eps):
    # atoms s_1 = z, s_2 = 0: ε log(1 + e^{z/ε}) = ε·softplus(z/ε)
    layer = LSELayer(1, 2, eps, dtype=D)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0], [0.0]], dtype=D))
        layer.bias.zero_()
    z = torch.linspace(-5, 5, 101, dtype=D)[:, None]
    ref = F.softplus(z[:, 0], beta=1 / eps, threshold=1e9)
    assert (layer(z) - ref).abs().max().item() <= 1e-13


def test_weights_are_bias_gradient():
    layer = _layer()
    x = torch.randn(4, 3, dtype=D)
    pi = layer.attribution_weights(x)
    assert (pi.sum(-1) - 1).abs().max() <= 1e-14
    for i in range(4):
        (gb,) = torch.autograd.grad(layer(x[i]), layer.bias)
        assert (gb - pi[i]).abs().max().item() <= 1e-14


def test_bad_input():
    with pytest.raises(ValueError, match="eps"):
        LSELayer(3, 4, eps=-0.1)
    with pytest.raises(ValueError, match="n_atoms"):
        LSELayer(3, 0)
    with pytest.raises(ValueError, match="in_features"):
        LSELayer(0, 3)
    layer = _layer()
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., in_features=3\)"):
        layer(torch.randn(5, 4, dtype=D))
    with pytest.raises(ValueError, match="x contains NaN"):
        layer(torch.tensor([[0.0, float("nan"), 1.0]], dtype=D))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="g must have shape"):
        LSELayer.from_atoms(torch.randn(4, 2), torch.randn(3))
    with pytest.raises(ValueError, match="t must be > 0"):
        layer.atoms(0.0)


def test_spec_declares_quadratic_hopf_cole():
    from hjseq.hamiltonians import Quadratic

    spec = _layer(eps=0.25).spec
    assert isinstance(spec.hamiltonian, Quadratic)
    assert spec.viscosity == 0.25 and spec.scheme == "hopf_cole"
