import math

import pytest
import torch

from hjseq.solver.compare import fit_order
from hjseq.solver.ode import SOLVERS, ButcherTableau, Dopri5, integrate, odeint

F64 = torch.float64


def _oscillator(t, y):
    return torch.stack([y[..., 1], -y[..., 0]], -1)


def _exact(y0, T):
    c, s = math.cos(T), math.sin(T)
    return torch.stack([y0[..., 0] * c + y0[..., 1] * s, -y0[..., 0] * s + y0[..., 1] * c], -1)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_grid_orders(method):
    y0 = torch.tensor([[1.0, 0.0], [0.2, -0.7]], dtype=F64)
    ns = [8, 16, 32, 64]
    errs = [float((odeint(_oscillator, y0, [0.0, 1.0], method=method, n_steps=n)[-1]
                   - _exact(y0, 1.0)).abs().max()) for n in ns]
    order = fit_order([1 / n for n in ns], errs)
    assert abs(order - SOLVERS[method].order) < 0.15, (order, errs)


def test_step_size_lands_on_output_times():
    y0 = torch.tensor([1.0], dtype=F64)
    res = integrate(lambda t, y: -y, y0, [0.0, 0.25, 1.0], method="euler", step_size=0.1)
    # 0.25 needs 3 steps of 1/12, 0.75 needs 8 steps of 3/32
    assert res.stats.n_accepted == 11
    expected = (1 - 0.25 / 3) ** 3 * (1 - 0.75 / 8) ** 8
    assert torch.allclose(res.ys[-1], torch.tensor([expected], dtype=F64), rtol=1e-14)


def test_dopri5_tableau_consistent():
    tab = Dopri5.tableau
    assert isinstance(tab, ButcherTableau)
    for ci, row in zip(tab.c, tab.a):  # row sums equal the nodes
        assert abs(sum(row) - ci) < 1e-14
    assert abs(sum(tab.b) - 1) < 1e-14 and abs(sum(tab.b_low) - 1) < 1e-14


@pytest.mark.parametrize("dtype,tol,bound", [(torch.float32, 1e-5, 1e-4), (F64, 1e-10, 1e-9)])
def test_dopri5_batched_dtypes_and_backwards_time(dtype, tol, bound):
    y0 = torch.randn(5, 3, 2, dtype=dtype)
    ys = odeint(_oscillator, y0, torch.tensor([0.0, 1.0, 3.0]), rtol=tol, atol=tol)
    assert ys.shape == (3, 5, 3, 2) and ys.dtype == dtype
    assert (ys[-1] - _exact(y0, 3.0)).abs().max() < bound
    back = odeint(_oscillator, ys[-1], [3.0, 0.0], rtol=tol, atol=tol)[-1]
    assert (back - y0).abs().max() < 10 * bound


def test_dopri5_rejects_then_recovers_on_stiff_start():
    # a fast transient then slow decay: the controller must reject and shrink at least once
    lam = torch.tensor([-200.0, -0.5], dtype=F64)
    res = integrate(lambda t, y: lam * y, torch.ones(2, dtype=F64), [0.0, 2.0], rtol=1e-8,
                    atol=1e-10, first_step=0.5)
    assert res.stats.n_rejected >= 1
    assert torch.allclose(res.ys[-1], torch.exp(2 * lam), atol=1e-8)


def test_errors_are_clear():
    y0 = torch.zeros(2)
    with pytest.raises(ValueError, match="method must be one of"):
        odeint(lambda t, y: y, y0, [0, 1], method="rk45")
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        odeint(lambda t, y: y, y0, [0, 1, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        odeint(lambda t, y: y, torch.tensor([float("nan")]), [0, 1])
    with pytest.raises(TypeError, match="floating-point"):
        odeint(lambda t, y: y, torch.zeros(2, dtype=torch.long), [0, 1])
    with pytest.raises(ValueError, match="step_size or n_steps"):
        odeint(lambda t, y: y, y0, [0, 1], method="rk4", step_size=0.1, n_steps=3)
    with pytest.raises(RuntimeError, match="max_steps"):
        odeint(lambda t, y: -50 * y, torch.ones(1, dtype=F64), [0, 10], rtol=1e-12, atol=1e-14,
               max_steps=5)
    with pytest.raises(FloatingPointError, match="non-finite"):
        odeint(lambda t, y: y * float("inf"), torch.ones(1), [0, 1])
