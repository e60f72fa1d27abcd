import math

import pytest
import torch

from hjseq.solver.compare import fit_order
from hjseq.solver.pde import (Grid, QuadraticHamiltonian, SolverSettings, TransportHamiltonian,
                              eno2, first_order, godunov, gradients, laplacian, lax_friedrichs,
                              pad, solve, weno5)

F64 = torch.float64


def test_grid_geometry():
    g = Grid((0.0, -1.0), (2.0, 1.0), (5, 9), periodic=(True, False))
    assert g.spacing == (0.4, 0.25)
    pts = g.points()
    assert pts.shape == (5, 9, 2)
    assert pts[-1, 0, 0] == pytest.approx(1.6) and pts[0, -1, 1] == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lo=(0.0,), hi=(1.0, 2.0), shape=(10,)), "same length|one length"),
    (dict(lo=(1.0,), hi=(0.0,), shape=(10,)), "hi > lo"),
    (dict(lo=(0.0,), hi=(1.0,), shape=(3,)), "at least 5"),
    (dict(lo=(0.0,) * 4, hi=(1.0,) * 4, shape=(8,) * 4), "1..3"),
])
def test_grid_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Grid(**kwargs)


def test_pad_periodic_and_linear_extrapolation():
    u = torch.arange(6, dtype=F64).reshape(2, 3) ** 2  # rows (0,1,4), (9,16,25)
    p = pad(u, 1, 2, periodic=True)
    assert p[0].tolist() == [1, 4, 0, 1, 4, 0, 1]
    e = pad(u, 1, 2, periodic=False)
    assert e[0].tolist() == [-2, -1, 0, 1, 4, 7, 10]


@pytest.mark.parametrize("scheme", [first_order, eno2, weno5])
def test_schemes_exact_on_linear_data_up_to_the_boundary(scheme):
    grid = Grid((-1.0, -2.0), (1.0, 2.0), (11, 13))
    X = grid.points()
    u = 0.7 * X[..., 0] - 1.3 * X[..., 1] + 0.2
    dm, dp = gradients(SolverSettings(upwind_scheme=scheme), grid, u)
    target = torch.tensor([0.7, -1.3], dtype=F64)
    assert (dm - target).abs().max() < 1e-12 and (dp - target).abs().max() < 1e-12


@pytest.mark.parametrize("scheme,order", [(first_order, 1), (eno2, 2), (weno5, 5)])
def test_one_sided_derivative_orders_on_smooth_periodic_data(scheme, order):
    errs, dxs = [], []
    for n in (20, 40, 80):
        grid = Grid((0.0,), (2 * math.pi,), (n,), periodic=True)
        x = grid.points()[..., 0]
        dm, dp = gradients(SolverSettings(upwind_scheme=scheme), grid, torch.sin(x))
        errs.append(float(torch.maximum((dm[..., 0] - torch.cos(x)).abs(),
                                        (dp[..., 0] - torch.cos(x)).abs()).max()))
        dxs.append(grid.spacing[0])
    assert fit_order(dxs, errs) > order - 0.3, errs


def test_laplacian_exact_on_quadratics_in_3d():
    grid = Grid((-1.0,) * 3, (1.0,) * 3, (7, 8, 9))
    X = grid.points()
    u = (X ** 2 * torch.tensor([1.0, 2.0, -0.5], dtype=F64)).sum(-1)
    # interior nodes (the linear extrapolation of the ghost cells is not exact for quadratics)
    assert (laplacian(grid, u)[1:-1, 1:-1, 1:-1] - 5.0).abs().max() < 1e-10


def test_godunov_and_lax_friedrichs_are_consistent_and_monotone():
    H = QuadraticHamiltonian(c=1.5)
    x = torch.zeros(50, 1, dtype=F64)
    p = torch.randn(50, 1, dtype=F64)
    for flux in (godunov, lax_friedrichs):  # consistency: Ĥ(p, p) = H(p)
        assert torch.allclose(flux(H, x, p, p, 0.0), H(x, p, 0.0))
    pm, pp = torch.randn(50, 1, dtype=F64), torch.randn(50, 1, dtype=F64)
    # monotone: non-decreasing in p⁻, non-increasing in p⁺. The Lax–Friedrichs α is a
    # grid-wide bound, so the perturbed and unperturbed pairs go through one call.
    x2 = torch.zeros(100, 1, dtype=F64)
    for flux in (godunov, lax_friedrichs):
        up = flux(H, x2, torch.cat([pm + 0.1, pm]), torch.cat([pp, pp]), 0.0)
        assert (up[:50] >= up[50:] - 1e-12).all()
        down = flux(H, x2, torch.cat([pm, pm]), torch.cat([pp + 0.1, pp]), 0.0)
        assert (down[:50] <= down[50:] + 1e-12).all()


def test_transport_rotation_2d_periodic_batched():
    # u_t + v·∇u = 0 with constant v on a periodic box: exact translation
    v = torch.tensor([1.0, -0.5], dtype=F64)
    H = TransportHamiltonian(lambda x, t: v.expand_as(x))
    grid = Grid((0.0, 0.0), (2 * math.pi, 2 * math.pi), (48, 48), periodic=True)
    X = grid.points()
    u0 = torch.stack([torch.sin(X[..., 0]) * torch.cos(X[..., 1]),
                      torch.cos(X[..., 0] + X[..., 1])])  # batch of 2
    T = 0.5
    u = solve(SolverSettings.with_accuracy("high", numerical_hamiltonian=godunov), H, grid, u0,
              [0.0, T])
    assert u.shape == (2, 2, 48, 48)
    Xs = X - T * v
    exact = torch.stack([torch.sin(Xs[..., 0]) * torch.cos(Xs[..., 1]),
                         torch.cos(Xs[..., 0] + Xs[..., 1])])
    assert (u[-1] - exact).abs().max() < 2e-3


def test_solve_three_dimensions_viscous_quadratic_closed_form():
    # g = a|x|²/2 ⇒ u = a|x|²/(2(1+2at)) + (ε d/2) log(1 + 2at)
    a, eps, d, T = 0.5, 0.1, 3, 0.2
    grid = Grid((-1.5,) * d, (1.5,) * d, (17,) * d)
    X = grid.points()
    u = solve(SolverSettings.with_accuracy("medium"), QuadraticHamiltonian(), grid,
              a * (X ** 2).sum(-1) / 2, [0.0, T], eps=eps)[-1]
    exact = a * (X ** 2).sum(-1) / (2 * (1 + 2 * a * T)) + eps * d / 2 * math.log(1 + 2 * a * T)
    inner = (X.abs() <= 1.0).all(-1)
    assert (u - exact)[inner].abs().max() < 5e-3


def test_solve_errors():
    grid = Grid((0.0,), (1.0,), (11,))
    s = SolverSettings()
    H = QuadraticHamiltonian()
    with pytest.raises(ValueError, match="grid shape"):
        solve(s, H, grid, torch.zeros(12, dtype=F64), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        solve(s, H, grid, torch.full((11,), float("nan"), dtype=F64), [0, 1])
    with pytest.raises(ValueError, match="strictly increasing"):
        solve(s, H, grid, torch.zeros(11, dtype=F64), [1, 0])
    with pytest.raises(ValueError, match="eps"):
        solve(s, H, grid, torch.zeros(11, dtype=F64), [0, 1], eps=-1)
    with pytest.raises(ValueError, match="accuracy"):
        SolverSettings.with_accuracy("ultra")
    with pytest.raises(ValueError, match="cfl"):
        SolverSettings(cfl=1.5)

    class NoGodunov:
        def __call__(self, x, p, t):
            return (p * p).sum(-1)

        def max_speed(self, x, lo, hi, t):
            return torch.ones(1, dtype=F64)

    with pytest.raises(TypeError, match="lax_friedrichs"):
        solve(SolverSettings(numerical_hamiltonian=godunov), NoGodunov(), grid,
              torch.zeros(11, dtype=F64), [0, 0.1])
