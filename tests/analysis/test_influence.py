"""Influence identities against autograd; attention weights collected from a model."""
import torch
from torch import nn

from hjseq import hopf
from hjseq.analysis.influence import (
    TrainingPointRegressor,
    attention_entropy,
    attention_weights,
    bias_influence,
    characteristic_foot,
    effective_atoms,
    hopf_cole_gradient,
    soft_prediction,
    top_influences,
    weight_influence,
)
from hjseq.analysis.reproduce import influence_identities
from hjseq.nn.attention import HJAttention
from hjseq.nn.lse import LSELayer

D = torch.float64


def _layer(eps=0.4):
    layer = LSELayer(3, 8, eps, dtype=D)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    return layer


def test_identities_against_autograd():
    errs = influence_identities()
    assert max(errs.values()) <= 1e-13, errs


def test_closed_forms_batched():
    layer = _layer()
    x = torch.randn(10, 3, dtype=D, requires_grad=True)
    f = layer(x)
    gx, gW, gb = torch.autograd.grad(f.sum(), (x, layer.weight, layer.bias))
    assert (bias_influence(layer, x).sum(0) - gb).abs().max().item() <= 1e-13
    assert (weight_influence(layer, x).sum(0) - gW).abs().max().item() <= 1e-13
    # ∇_x u with u = |x|²/(4t) − f, and ∇f = E_π[W]
    t = 0.5
    assert (hopf_cole_gradient(layer, x, t) - (x / (2 * t) - gx)).abs().max().item() <= 1e-13
    y, g = layer.atoms(t)
    pi = hopf.gibbs_weights(x, y, g, t, layer.eps)
    assert (soft_prediction(layer, x, t) - pi @ g).abs().max().item() <= 1e-12
    assert (characteristic_foot(layer, x, t) - pi @ y).abs().max().item() <= 1e-12


def test_training_point_influence():
    X = torch.rand(50, 2, dtype=D)
    z = torch.randn(50, dtype=D, requires_grad=True)
    reg = TrainingPointRegressor(X, z.detach(), eps=0.05)
    x = torch.rand(4, 2, dtype=D)
    infl = reg.influence(x)
    for i in range(4):
        (gz,) = torch.autograd.grad(reg.influence(x[i]) @ z, z)
        assert (gz - infl[i]).abs().max().item() <= 1e-14
    # ∂f/∂b_j = π_j for the underlying LSE layer
    (gb,) = torch.autograd.grad(reg.layer(x[0]), reg.layer.bias)
    assert (gb - infl[0]).abs().max().item() <= 1e-14
    vals, idx = top_influences(infl[0], 3)
    nearest = (X - x[0]).norm(dim=-1).argsort()[:3]
    assert set(idx.tolist()) == set(nearest.tolist())  # g = 0 atoms: the closest points weigh most
    assert 1 <= effective_atoms(infl).min().item() and effective_atoms(infl).max().item() <= 50


class _TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a1 = HJAttention(8, 2, causal=True, dtype=D)
        self.mid = nn.Linear(8, 8, dtype=D)
        self.a2 = HJAttention(8, 4, causal=False, eps=0.5, dtype=D)

    def forward(self, x, mask=None):
        return self.a2(torch.tanh(self.mid(self.a1(x, mask))), key_padding_mask=mask)


def test_attention_weights_of_every_head():
    m = _TwoLayer()
    x = torch.randn(2, 5, 8, dtype=D)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 4] = True
    pis = attention_weights(m, x, mask)
    assert set(pis) == {"a1", "a2"}
    assert pis["a1"].shape == (2, 2, 5, 5) and pis["a2"].shape == (2, 4, 5, 5)
    assert (pis["a1"] - m.a1.attribution_weights(x, mask)).abs().max().item() == 0
    h = torch.tanh(m.mid(m.a1(x, mask)))
    assert (pis["a2"] - m.a2.attribution_weights(h, mask)).abs().max().item() <= 1e-15
    assert pis["a2"][1, :, :, 4].abs().max().item() == 0
    ent = attention_entropy(pis["a2"])
    assert ent.shape == (2, 4, 5) and ent.min().item() >= 0
