"""hjseq.spec / hamiltonians / schemes: closed forms against autograd, scheme orders."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hjseq import hopf
from hjseq.hamiltonians import GRU, LSTM, ElmanRNN, LinearSSM, Quadratic
from hjseq.schemes import SCHEMES, get_scheme
from hjseq.spec import ConstantStep, GateStep, Hamiltonian, HJSpec, SoftplusStep

f64 = dict(dtype=torch.float64)


def _drives(B=3, H=4):
    rnn = {"u": torch.randn(B, H, **f64), "weight_hh": torch.randn(H, H, **f64),
           "bias_hh": torch.randn(H, **f64)}
    gru = {"u": torch.randn(B, 3 * H, **f64), "weight_hh": torch.randn(3 * H, H, **f64),
           "bias_hh": torch.randn(3 * H, **f64)}
    lstm = {"i": torch.rand(B, H, **f64), "f": torch.rand(B, H, **f64),
            "g": torch.rand(B, H, **f64) * 2 - 1}
    return rnn, gru, lstm


def _slope(xs, ys):
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


@pytest.mark.parametrize("which", ["rnn", "lstm", "ssm"])
def test_dH_dh_closed_form_matches_autograd(which):
    rnn, _, lstm = _drives()
    if which == "ssm":
        ham, h = LinearSSM(), torch.randn(3, 4, 5, **f64)
        d = {"A": -torch.rand(4, 5, **f64), "B": torch.randn(3, 5, **f64),
             "u": torch.randn(3, 4, **f64)}
    else:
        ham, d = (ElmanRNN(), rnn) if which == "rnn" else (LSTM(), lstm)
        h = torch.randn(3, 4, **f64)
    p = torch.randn_like(h)
    closed = ham.dH_dh(0.0, h, p, d)
    auto = Hamiltonian.dH_dh(ham, 0.0, h, p, d)
    assert closed.shape == h.shape
    torch.testing.assert_close(closed, auto, atol=1e-13, rtol=0)
    # control-affine H = p·F: no value change along characteristics
    assert ham.value_rate(0.0, h, p, d).abs().max() < 1e-13


def test_gru_autograd_costate_is_vjp():
    _, gru, _ = _drives()
    ham, h = GRU(), torch.randn(3, 4, **f64)
    p = torch.randn_like(h)
    _, vjp = torch.func.vjp(lambda hh: ham.velocity(0.0, hh, gru), h)
    torch.testing.assert_close(ham.dH_dh(0.0, h, p, gru), vjp(p)[0], atol=1e-13, rtol=0)


def test_quadratic_hamiltonian():
    ham, h, p = Quadratic(), torch.randn(5, 3, **f64), torch.randn(5, 3, **f64)
    torch.testing.assert_close(ham.hamiltonian(0, h, p, {}), (p * p).sum(-1))
    torch.testing.assert_close(ham.dH_dp(0, h, p, {}), 2 * p)
    torch.testing.assert_close(ham.value_rate(0, h, p, {}), (p * p).sum(-1))  # p·2p − |p|²
    assert ham.dH_dh(0, h, p, {}).abs().max() == 0


def test_hopf_cole_scheme_is_exact_characteristic_and_value():
    ham = Quadratic()
    y = torch.tensor([[-1.5], [-0.5], [0.5], [1.5]], **f64)
    g = torch.tensor([1.0, 0.3, 0.3, 1.0], **f64)
    x = torch.linspace(-2, 2, 9, **f64)[:, None]
    sch = get_scheme("hopf_cole")
    assert sch.order == math.inf
    torch.testing.assert_close(sch.value(x, y, g, 1.0, 0.2), hopf.hopf_cole(x, y, g, 1.0, 0.2))
    w = sch.weights(x, y, g, 1.0, 0.2)
    torch.testing.assert_close(w.sum(-1), torch.ones(9, **f64))
    # characteristics of |p|² are straight lines: one step of size 1 == 8 steps of 1/8
    p = torch.randn(9, 1, **f64)
    one = sch.step(ham, 1.0, 0.0, x, {"p": p})
    many = x
    for _ in range(8):
        many = sch.step(ham, 1 / 8, 0.0, many, {"p": p})
    torch.testing.assert_close(one, many, atol=1e-14, rtol=0)
    torch.testing.assert_close(one, x + 2 * p)
    with pytest.raises(ValueError, match="hopf_cole.*'quadratic'"):
        sch.check(ElmanRNN())
    with pytest.raises(ValueError, match="hopf_cole.*'quadratic'"):
        HJSpec(ElmanRNN(), scheme="hopf_cole")


def _ssm_case():
    ham = LinearSSM()
    d = {"A": -torch.rand(3, 4, **f64) - 0.5, "B": torch.randn(2, 4, **f64),
         "u": torch.randn(2, 3, **f64)}
    return ham, d, torch.randn(2, 3, 4, **f64)


def test_zoh_is_exact_flow_of_linear_field():
    ham, d, h = _ssm_case()
    a, b = ham.affine(0.0, d)
    dt = 0.7
    exact = (h + b / a) * torch.exp(a * dt) - b / a  # solution of ḣ = a h + b
    torch.testing.assert_close(SCHEMES["zoh"].step(ham, dt, 0.0, h, d), exact,
                               atol=1e-13, rtol=0)
    # a = 0 channel: the limit Δ·b
    d0 = dict(d, A=torch.zeros(3, 4, **f64))
    torch.testing.assert_close(SCHEMES["zoh"].step(ham, dt, 0.0, h, d0), h + dt * ham.affine(0, d0)[1])


def test_zoh_vs_euler_b_differ_at_second_order_per_step():
    ham, d, h = _ssm_case()
    dts = [0.1, 0.05, 0.025, 0.0125]
    diffs = [float((SCHEMES["zoh"].step(ham, dt, 0, h, d)
                    - SCHEMES["euler_b"].step(ham, dt, 0, h, d)).abs().max()) for dt in dts]
    assert abs(_slope(dts, diffs) - 2.0) < 0.05, diffs
    # and the leading term is Δ² a b / 2
    a, b = ham.affine(0, d)
    lead = (dts[-1] ** 2 * a * b / 2).abs().max().item()
    assert abs(diffs[-1] / lead - 1) < 0.02


def test_euler_observed_order_one():
    rnn = _drives()[0]
    ham, h0 = ElmanRNN(), torch.randn(3, 4, **f64)

    def integrate(n):
        h = h0
        for _ in range(n):
            h = SCHEMES["euler"].step(ham, 1.0 / n, 0.0, h, rnn)
        return h

    ref = integrate(8192)
    ns = [8, 16, 32, 64]
    errs = [float((integrate(n) - ref).abs().max()) for n in ns]
    assert abs(_slope(ns, errs) + 1.0) < 0.1, errs


def test_gated_euler_per_coordinate_step():
    _, gru, _ = _drives()
    ham, h = GRU(), torch.randn(3, 4, **f64)
    rule = GateStep(ham.update_gate, dt=0.5)
    dt = rule(0.0, h, gru)
    assert dt.shape == h.shape and (dt > 0).all() and (dt < 0.5).all()
    out = SCHEMES["gated_euler"].step(ham, dt, 0.0, h, gru)
    torch.testing.assert_close(out, h + dt * ham.velocity(0.0, h, gru))
    with pytest.raises(ValueError, match="step"):
        SCHEMES["gated_euler"].step(ham, torch.rand(5, 4, **f64), 0.0, h, gru)


def test_softplus_step_broadcasts_over_state_axes():
    rule = SoftplusStep(bias=torch.tensor([0.0, 1.0, -1.0], **f64))
    d = {"delta": torch.zeros(2, 3, **f64)}
    dt = rule(0.0, torch.zeros(2, 3, 4, **f64), d)
    assert dt.shape == (2, 3, 1)
    torch.testing.assert_close(dt[0, :, 0], torch.nn.functional.softplus(rule.bias))


def test_spec_validation_names_the_argument():
    with pytest.raises(ValueError, match="dt"):
        ConstantStep(0.0)
    with pytest.raises(ValueError, match="dt"):
        ConstantStep(-1.0)
    with pytest.raises(ValueError, match="eps"):
        HJSpec(ElmanRNN(), viscosity=-0.1)
    with pytest.raises(ValueError, match="eps"):
        HJSpec(ElmanRNN(), viscosity=torch.tensor([0.1, -0.2]))
    with pytest.raises(ValueError, match="scheme"):
        HJSpec(ElmanRNN(), scheme="rk4")
    with pytest.raises(TypeError, match="hamiltonian"):
        HJSpec(lambda t, h, d: h)
    with pytest.raises(ValueError, match="scheme 'zoh' needs .*'affine'.*euler"):
        HJSpec(ElmanRNN(), scheme="zoh")  # rejected when the spec is built
    with pytest.raises(NotImplementedError, match="affine"):
        SCHEMES["zoh"].step(ElmanRNN(), 0.1, 0.0, torch.zeros(3, 4, **f64), _drives()[0])
    # a learnable viscosity is accepted and re-validated on demand
    eps = torch.nn.Parameter(torch.tensor([0.1, 0.2]))
    spec = HJSpec(ElmanRNN(), viscosity=eps, scheme="euler")
    assert spec.stochastic and spec.order == 1
    with torch.no_grad():
        eps[0] = -1.0
    with pytest.raises(ValueError, match="eps"):
        spec.validate()
