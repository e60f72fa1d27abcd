"""tropicalize: ε → 0 copies, deviation bounds, linear-region counts."""
import math

import pytest
import torch
from torch import nn

from hjseq.analysis.reproduce import tropical_summary
from hjseq.analysis.tropical import count_linear_regions, linear_region_patterns, tropicalize
from hjseq.nn import HJGRU
from hjseq.nn.attention import HJAttention
from hjseq.nn.lse import LSELayer

D = torch.float64


def _lse(d, n, eps):
    layer = LSELayer(d, n, eps, dtype=D)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    return layer


def test_copy_at_zero_eps_and_bound():
    model = nn.Sequential(_lse(3, 7, 0.2))
    trop, report = tropicalize(model)
    assert model[0].eps == 0.2 and trop[0].eps == 0.0
    assert report.lse_bound == pytest.approx(0.2 * math.log(7))
    x = torch.randn(1000, 3, dtype=D)
    with torch.no_grad():
        dev = model(x) - trop(x)
    assert dev.min().item() >= -1e-14 and dev.max().item() <= report.lse_bound
    assert torch.equal(trop(x), model[0].logits(x).max(-1).values)


def test_attention_and_recurrent_blocks():
    att = HJAttention(8, 2, dtype=D)
    gru = HJGRU(8, 4, eps=0.3)
    model = nn.ModuleDict({"att": att, "gru": gru})
    trop, report = tropicalize(model)
    kinds = {e.name: e.kind for e in report.entries}
    assert kinds == {"att": "attention", "gru": "recurrent"}
    assert trop["att"].eps == 0.0 and float(trop["gru"].eps) == 0.0 and float(gru.eps) == 0.3
    x = torch.randn(1, 4, 8, dtype=D)
    pi = trop["att"].attribution_weights(x)
    assert set(pi.unique().tolist()) <= {0.0, 1.0}
    assert report.lse_bound == 0.0


def test_lse_unit_banks_are_tropicalized():
    from hjseq.models.lm import LSEMLP

    mlp = LSEMLP(4, n_units=3, n_atoms=5, eps=0.1).double()
    trop, report = tropicalize(mlp)
    assert trop.eps == 0.0 and report.entries[0].kind == "lse_units"
    assert report.lse_bound == pytest.approx(3 * 0.1 * math.log(5))
    x = torch.randn(20, 4, dtype=D)
    with torch.no_grad():
        u, u0 = mlp.unit_outputs(x), trop.unit_outputs(x)
    assert (u - u0).min().item() >= -1e-14 and (u - u0).max().item() <= 0.1 * math.log(5)


def test_regions_1d_atoms_all_active():
    y = torch.tensor([[-2.0], [-0.7], [0.1], [0.9], [2.2]], dtype=D)
    layer = LSELayer.from_atoms(y, torch.zeros(5, dtype=D), eps=0.3)
    assert count_linear_regions(tropicalize(layer)[0], -3.0, 3.0, 2000) == 5
    # a dominated atom (large g) owns no region
    layer2 = LSELayer.from_atoms(y, torch.tensor([0, 0, 5.0, 0, 0], dtype=D), eps=0.3)
    assert count_linear_regions(tropicalize(layer2)[0], -3.0, 3.0, 2000) == 4


class _Column(nn.Module):
    def forward(self, x):
        return x[..., None]


def test_regions_2d_voronoi_and_composition():
    res = tropical_summary()
    assert res["regions_2d_grid_atoms"] == 16  # 4×4 grid atoms, g = 0: Voronoi cells
    assert res["regions_1d"] == res["active_atoms_1d"]
    assert 0 <= res["min_deviation"] and res["max_deviation"] <= res["bound"]
    # two stacked max layers: patterns are pairs of winners
    model = nn.Sequential(_lse(2, 4, 0.0), _Column(), _lse(1, 3, 0.0))
    pats = linear_region_patterns(model, torch.randn(100, 2, dtype=D))
    assert pats.shape == (100, 2)
    assert count_linear_regions(model, -2.0, 2.0, 100) == torch.unique(
        linear_region_patterns(model, torch.cartesian_prod(*[torch.linspace(-2, 2, 100, dtype=D)] * 2)), dim=0
    ).shape[0]


def test_bad_input():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        tropicalize(3)
    with pytest.raises(ValueError, match="nothing to count"):
        linear_region_patterns(nn.Linear(2, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="d = 1 or 2"):
        count_linear_regions(_lse(3, 2, 0.0), -1.0, 1.0)
