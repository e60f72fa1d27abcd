"""The second-order ``exp_trapezoidal`` scheme (Mamba-3's rule) for every affine spec, its
carried input, and irregular time (per-token sampling intervals) for every SSM block."""
from __future__ import annotations

import math
import pathlib
import sys

import pytest
import torch

from hjseq.engine import CarriedState
from hjseq.hamiltonians import LinearSSM
from hjseq.nn import HJMamba, HJRNN
from hjseq.schemes import get_scheme
from hjseq.solver import compare

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from examples.mingru import MinGRU  # noqa: E402

f64 = torch.float64


def _mamba(scheme="exp_trapezoidal"):
    torch.manual_seed(0)
    m = HJMamba(4, d_state=3, d_conv=3, expand=1, scheme=scheme, dtype=f64)
    with torch.no_grad():
        m.dt_proj.bias.fill_(0.5)
    return m


def test_exp_trapezoidal_lambda_one_is_euler_b_and_half_is_trapezoid():
    ham = LinearSSM()
    d = {"A": -torch.rand(3, 4, dtype=f64) - 0.5, "B": torch.randn(2, 4, dtype=f64),
         "u": torch.randn(2, 3, dtype=f64)}
    h = torch.randn(2, 3, 4, dtype=f64)
    prev = torch.randn(2, 3, 4, dtype=f64)
    trap = get_scheme("exp_trapezoidal")
    assert trap.order == 2 and trap.carries_input
    one = trap.step(ham, 0.3, 0.0, h, {**d, "previous_input": prev, "trap": 1.0})
    assert (one - get_scheme("euler_b").step(ham, 0.3, 0.0, h, d)).abs().max() <= 1e-15
    half = trap.step(ham, 0.3, 0.0, h, {**d, "previous_input": prev})
    a, b = ham.affine(0.0, d)
    want = torch.exp(0.3 * a) * h + 0.15 * (torch.exp(0.3 * a) * prev + b)
    assert (half - want).abs().max() <= 1e-15


@pytest.mark.parametrize("make", [lambda: MinGRU(3, 5, scheme="exp_trapezoidal").double(),
                                  _mamba], ids=["mingru", "mamba"])
def test_exp_trapezoidal_fused_equals_loop_and_carries_its_input(make):
    blk = make()
    x = torch.randn(2, 9, blk.input_size, dtype=f64, requires_grad=True)
    assert blk.fused_path() == "linear_scan"
    y, final = blk(x, return_final_state=True)
    assert isinstance(final, CarriedState)
    blk.backend = "loop"
    yl, fl = blk(x, return_final_state=True)
    assert (y - yl).abs().max() <= 1e-12
    g = torch.autograd.grad(y.sum(), x)[0]
    gl = torch.autograd.grad(yl.sum(), x)[0]
    assert (g - gl).abs().max() <= 1e-12
    blk.backend = "auto"
    # split in two: the carried state continues exactly; decoding token by token too
    y1, s1 = blk(x[:, :4], return_final_state=True)
    y2, _ = blk(x[:, 4:], initial_state=s1, return_final_state=True)
    assert (torch.cat([y1, y2], 1) - y).abs().max() <= 1e-12
    state = None
    for t in range(9):
        y_t, state = blk.step(x[:, t], state)
        assert (y_t - y[:, t]).abs().max() <= 1e-12
    with pytest.raises(ValueError, match="previous_input must have"):
        blk(x, initial_state=CarriedState(final.state, torch.zeros(1)))


def test_compare_orders_per_scheme_and_for_a_user_spec():
    x = torch.randn(1, 6, 4, dtype=f64)
    m = _mamba()
    orders = {}
    for scheme in ("euler_b", "zoh", "exp_trapezoidal"):
        m.spec.scheme = scheme
        orders[scheme] = compare(m, x, refinements=(1, 2, 4, 8))
    assert abs(orders["euler_b"].observed_order - 1) <= 0.25
    assert max(orders["zoh"].refinement_error) <= 1e-10
    assert abs(orders["exp_trapezoidal"].observed_order - 2) <= 0.25
    g = MinGRU(4, 6, dt=0.8, scheme="exp_trapezoidal").double()
    assert abs(compare(g, x, refinements=(1, 2, 4, 8)).observed_order - 2) <= 0.3


# ----------------------------------------------------------------------------- irregular time

def test_irregular_time_scales_the_step():
    blk = MinGRU(3, 4, dt=0.5).double()
    unit = MinGRU(3, 4, dt=1.0).double()
    unit.load_state_dict(blk.state_dict())
    x = torch.randn(2, 7, 3, dtype=f64)
    assert (blk(x) - unit(x, dt=torch.full((2, 7), 0.5, dtype=f64))).abs().max() <= 1e-15
    assert (blk(x, dt=torch.ones(2, 7, dtype=f64)) - blk(x)).abs().max() == 0


@pytest.mark.parametrize("scheme", ["euler_b", "zoh", "exp_trapezoidal"])
def test_irregular_time_every_path_equals_loop_and_step(scheme):
    m = _mamba(scheme)
    x = torch.randn(2, 8, 4, dtype=f64)
    ts = torch.rand(2, 8, dtype=f64) * 2
    y, _ = m(x, dt=ts, return_final_state=True)
    m.backend = "loop"
    assert (m(x, dt=ts) - y).abs().max() <= 1e-12
    m.backend = "auto"
    state = None
    for t in range(8):
        y_t, state = m.step(x[:, t], state, dt=ts[:, t])
        assert (y_t - y[:, t]).abs().max() <= 1e-12


def test_irregular_time_keeps_zoh_exact_and_trapezoid_second_order():
    x = torch.randn(1, 6, 4, dtype=f64)
    ts = torch.tensor([[0.3, 1.7, 0.05, 2.5, 0.9, 1.2]], dtype=f64)
    m = _mamba("zoh")
    assert max(compare(m, x, refinements=(1, 2), dt=ts).refinement_error) <= 1e-10
    m.spec.scheme = "exp_trapezoidal"
    assert abs(compare(m, x, refinements=(1, 2, 4, 8), dt=ts).observed_order - 2) <= 0.3


def test_irregular_time_on_nonaffine_blocks_and_bad_input():
    rnn = HJRNN(3, 4).double()
    x = torch.randn(2, 5, 3, dtype=f64)
    ts = torch.rand(2, 5, dtype=f64)
    y = rnn(x, dt=ts)  # the closed-form torch cell cannot: the loop runs it
    rnn.backend = "loop"
    assert (rnn(x, dt=ts) - y).abs().max() <= 1e-15
    with pytest.raises(ValueError, match=r"dt \(per-token time steps\) must be a floating "
                                         r"tensor of shape \(B, L\) = \(2, 5\)"):
        rnn(x, dt=torch.ones(2, 4, dtype=f64))
    with pytest.raises(ValueError, match="finite and >= 0"):
        rnn(x, dt=torch.full((2, 5), -1.0, dtype=f64))
    with pytest.raises(ValueError, match="finite and >= 0"):
        rnn(x, dt=torch.full((2, 5), math.nan, dtype=f64))


def test_irregular_time_example_shows_the_orders():
    """examples/irregular_time.py: with the true parameters, halving the mean sampling gap
    halves zoh's error and quarters exp_trapezoidal's; a fit runs through dt."""
    from examples.irregular_time import fit

    zoh = [fit(g, "zoh", steps=2)["true_parameter_error"] for g in (0.2, 0.1)]
    trap = [fit(g, "exp_trapezoidal", steps=2)["true_parameter_error"] for g in (0.2, 0.1)]
    assert 1.6 <= zoh[0] / zoh[1] <= 2.6
    assert 3.2 <= trap[0] / trap[1] <= 5.5
    assert trap[1] < zoh[1] / 5
