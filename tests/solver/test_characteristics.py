import math

import pytest
import torch

from hjseq.hamiltonians import ElmanRNN, LinearSSM, Quadratic
from hjseq.schemes import get_scheme
from hjseq.solver.characteristics import integrate_field, solve_characteristics

F64 = torch.float64


def _rnn_drives(B, S, L, gen=None):
    W = 0.5 * torch.randn(S, S, dtype=F64)
    return [{"u": torch.randn(B, S, dtype=F64), "weight_hh": W} for _ in range(L)]


def test_knots_and_dt_agree_and_shapes():
    B, S, L = 3, 4, 4
    drives = _rnn_drives(B, S, L)
    h0, p0 = torch.randn(B, S, dtype=F64), torch.randn(B, S, dtype=F64)
    t = torch.tensor([0.0, 0.5, 0.7, 1.5, 2.0], dtype=F64)
    a = solve_characteristics(ElmanRNN(), h0, p0, t=t, inputs=drives)
    b = solve_characteristics(ElmanRNN(), h0, p0, inputs=drives, dt=t[1:] - t[:-1])
    c = solve_characteristics(ElmanRNN(), h0, p0, inputs=drives,
                              dt=(t[1:] - t[:-1]).expand(B, L))
    assert a.h.shape == (B, L + 1, S) and a.p.shape == (B, L + 1, S) and a.u.shape == (B, L + 1)
    assert torch.allclose(a.h, b.h, atol=1e-12) and torch.allclose(a.h, c.h, atol=1e-12)
    assert torch.allclose(a.p, c.p, atol=1e-12)
    assert a.stats.nfe > 0


def test_costate_is_the_adjoint_of_the_state_flow():
    # d/dt (p·δh) = 0 along a characteristic: the co-state transports linearised perturbations
    B, S, L = 2, 3, 3
    drives = _rnn_drives(B, S, L)
    h0, p0 = torch.randn(B, S, dtype=F64), torch.randn(B, S, dtype=F64)
    dt = torch.tensor([0.4, 0.9, 0.6], dtype=F64)
    sol = solve_characteristics(ElmanRNN(), h0, p0, inputs=drives, dt=dt)
    flow = lambda h: solve_characteristics(ElmanRNN(), h, inputs=drives, dt=dt).h[:, -1]  # noqa
    delta, eta = torch.randn(B, S, dtype=F64), 1e-5
    Jdelta = (flow(h0 + eta * delta) - flow(h0 - eta * delta)) / (2 * eta)  # central difference
    # p(T)·(J δ) = p(0)·δ
    assert torch.allclose((sol.p[:, -1] * Jdelta).sum(-1), (p0 * delta).sum(-1), atol=1e-7)


def test_callable_inputs_see_the_state_at_token_start():
    B, S, L = 2, 3, 3
    drives = _rnn_drives(B, S, L)
    seen = []

    def inputs(k, h):
        seen.append(h.clone())
        return drives[k]

    h0 = torch.randn(B, S, dtype=F64)
    sol = solve_characteristics(ElmanRNN(), h0, inputs=inputs, dt=torch.ones(L, dtype=F64))
    ref = solve_characteristics(ElmanRNN(), h0, inputs=drives, dt=torch.ones(L, dtype=F64))
    assert torch.equal(sol.h, ref.h)
    assert all(torch.equal(s, sol.h[:, k]) for k, s in enumerate(seen))


def test_ssm_state_axes_float32_and_zoh():
    gen = torch.Generator().manual_seed(0)
    B, D, N = 2, 3, 4
    A = -torch.rand(D, N, generator=gen) - 0.5
    drive = {"A": A, "B": torch.randn(B, N, generator=gen), "u": torch.randn(B, D, generator=gen)}
    delta = torch.rand(B, D, 1, generator=gen) + 0.1
    h0 = torch.randn(B, D, N, generator=gen)
    sol = solve_characteristics(LinearSSM(), h0, dt=delta.unsqueeze(1), inputs=[drive],
                                rtol=1e-6, atol=1e-8)
    assert sol.h.dtype == torch.float32 and sol.h.shape == (B, 2, D, N)
    zoh = get_scheme("zoh").step(LinearSSM(), delta, 0.0, h0, drive)
    assert (sol.h[:, -1] - zoh).abs().max() < 1e-5


def test_fixed_step_methods_accepted():
    h0 = torch.randn(2, 3, dtype=F64)
    drives = _rnn_drives(2, 3, 2)
    ref = solve_characteristics(ElmanRNN(), h0, inputs=drives, dt=torch.ones(2, dtype=F64)).h
    rk4 = solve_characteristics(ElmanRNN(), h0, inputs=drives, dt=torch.ones(2, dtype=F64),
                                method="rk4", n_steps=40).h
    assert (rk4 - ref).abs().max() < 1e-7


def test_integrate_field_exponential():
    h = torch.tensor([[1.0, 2.0]], dtype=F64)
    out = integrate_field(lambda y: -0.5 * y, h)
    assert torch.allclose(out, h * math.exp(-0.5), atol=1e-11)


def test_errors():
    h0 = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="exactly one of t"):
        solve_characteristics(ElmanRNN(), h0, inputs=None)
    with pytest.raises(ValueError, match="strictly increasing"):
        solve_characteristics(Quadratic(), h0, t=[0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="p0 must have"):
        solve_characteristics(Quadratic(), h0, torch.zeros(2, 4, dtype=F64), t=[0.0, 1.0])
    with pytest.raises(ValueError, match="control-affine"):
        solve_characteristics(Quadratic(), h0, h0, dt=torch.ones(2, 1, 3, dtype=F64))
    with pytest.raises(ValueError, match="state axes"):
        solve_characteristics(LinearSSM(), h0, t=[0.0, 1.0])
    with pytest.raises(ValueError, match="inputs has 2 tokens"):
        solve_characteristics(ElmanRNN(), h0, inputs=_rnn_drives(2, 3, 2), t=[0.0, 1.0])
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        solve_characteristics(Quadratic(), h0, dt=torch.tensor([1.0, -1.0], dtype=F64))
