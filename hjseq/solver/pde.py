"""Grid solver for the viscous Hamilton–Jacobi equation in 1–3 dimensions

    u_t + H(x, ∇u, t) = ε Δu,        u(·, t0) = u0.

Method of lines (Osher–Sethian / Osher–Shu): one-sided derivatives ``D⁻u, D⁺u`` per axis
from an upwind scheme (first order, ENO2, WENO5), a monotone numerical Hamiltonian
``Ĥ(x, p⁻, p⁺)`` (Godunov or Lax–Friedrichs), the Laplacian by central differences, and a
TVD Runge–Kutta integrator with a CFL-limited step

    dt = CFL / (Σ_i α_i/dx_i + 2ε Σ_i 1/dx_i²),      α_i = max |∂H/∂p_i| on the grid.

Boundaries are periodic or linearly extrapolated (ghost cells), per axis.
``SolverSettings`` is a small dataclass of pluggable callables with accuracy presets
(the design of hj_reachability).

    grid = Grid(lo=(-2.0,), hi=(2.0,), shape=(201,))
    u = solve(SolverSettings.with_accuracy("high"), QuadraticHamiltonian(), grid,
              u0, times=[0.05, 0.5], eps=0.2)                       # (2, 201)

Values carry optional leading batch dimensions: u0 is (..., *grid.shape).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from hjseq.viscosity import check_viscosity


# ----------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class Grid:
    """Uniform grid on the box [lo, hi] ⊂ R^d, d ≤ 3. A periodic axis has ``n`` nodes at
    ``lo + i·dx`` with ``dx = (hi − lo)/n`` (hi is lo again); a non-periodic axis has ``n``
    nodes including both ends, ``dx = (hi − lo)/(n − 1)``, and extrapolating boundaries."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    shape: tuple[int, ...]
    periodic: bool | tuple[bool, ...] = False

    def __post_init__(self):
        d = len(self.shape)
        if not 1 <= d <= 3 or len(self.lo) != d or len(self.hi) != d:
            raise ValueError(f"Grid needs lo, hi, shape of one length d in 1..3, got "
                             f"{self.lo}, {self.hi}, {self.shape}")
        if any(h <= l for l, h in zip(self.lo, self.hi)):
            raise ValueError(f"Grid needs hi > lo on every axis, got {self.lo}, {self.hi}")
        if any(n < 5 for n in self.shape):
            raise ValueError(f"Grid needs at least 5 nodes per axis, got shape {self.shape}")
        per = self.periodic
        if isinstance(per, bool):
            per = (per,) * d
        if len(per) != d:
            raise ValueError(f"periodic must be a bool or one bool per axis, got {self.periodic}")
        object.__setattr__(self, "periodic", tuple(per))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple((h - l) / (n if p else n - 1)
                     for l, h, n, p in zip(self.lo, self.hi, self.shape, self.periodic))

    def axes(self, dtype=torch.float64, device=None) -> list[Tensor]:
        """Node coordinates per axis: list of (n_i,) tensors."""
        return [l + dx * torch.arange(n, dtype=dtype, device=device)
                for l, dx, n in zip(self.lo, self.spacing, self.shape)]

    def points(self, dtype=torch.float64, device=None) -> Tensor:
        """Node coordinates, shape (*shape, d)."""
        return torch.stack(torch.meshgrid(*self.axes(dtype, device), indexing="ij"), dim=-1)


# ----------------------------------------------------------------------------- Hamiltonians
class GridHamiltonian(Protocol):
    """What the grid solver needs of ``H(x, p, t)``. x: (*shape, d), p: (..., *shape, d)."""

    def __call__(self, x: Tensor, p: Tensor, t: float) -> Tensor: ...

    def max_speed(self, x: Tensor, p_lo: Tensor, p_hi: Tensor, t: float) -> Tensor:
        """Per-axis bound of |∂H/∂p_i| over the box p ∈ [p_lo, p_hi]; shape (d,)."""
        ...


class QuadraticHamiltonian:
    """``H(p) = c|p|²`` (the paper's ``|∇u|²`` at c = 1); Godunov flux in closed form."""

    def __init__(self, c: float = 1.0):
        if not c > 0:
            raise ValueError(f"c must be > 0 (convex quadratic), got {c}")
        self.c = c

    def __call__(self, x, p, t):
        return self.c * (p * p).sum(-1)

    def max_speed(self, x, p_lo, p_hi, t):
        bound = torch.maximum(p_lo.abs(), p_hi.abs())
        return 2 * self.c * bound.reshape(-1, bound.shape[-1]).amax(0)

    def godunov(self, x, p_minus, p_plus, t):
        # convex, minimum at p = 0: Ĥ = max(H(max(p⁻, 0)), H(min(p⁺, 0))) per axis (separable)
        a = p_minus.clamp_min(0)
        b = p_plus.clamp_max(0)
        return self.c * torch.maximum(a * a, b * b).sum(-1)


class TransportHamiltonian:
    """``H(x, p, t) = v(x, t)·p`` (linear transport with velocity field ``v``: (*shape, d));
    the Godunov flux is upwinding. Its characteristics are ``ẋ = v``; u is constant along them."""

    def __init__(self, velocity: Callable[[Tensor, float], Tensor]):
        self.velocity = velocity

    def __call__(self, x, p, t):
        return (self.velocity(x, t) * p).sum(-1)

    def max_speed(self, x, p_lo, p_hi, t):
        v = self.velocity(x, t)
        return v.abs().reshape(-1, v.shape[-1]).amax(0)

    def godunov(self, x, p_minus, p_plus, t):
        v = self.velocity(x, t)
        return (torch.where(v > 0, v * p_minus, v * p_plus)).sum(-1)


# ----------------------------------------------------------------------------- boundaries
def pad(u: Tensor, dim: int, width: int, periodic: bool) -> Tensor:
    """Add ``width`` ghost cells on both sides of axis ``dim``: wrapped if periodic, linearly
    extrapolated otherwise."""
    n = u.shape[dim]
    if periodic:
        return torch.cat([u.narrow(dim, n - width, width), u, u.narrow(dim, 0, width)], dim)
    k = torch.arange(1, width + 1, dtype=u.dtype, device=u.device)
    shape = [1] * u.dim()
    shape[dim] = width
    k = k.reshape(shape)
    first, second = u.narrow(dim, 0, 1), u.narrow(dim, 1, 1)
    last, before = u.narrow(dim, n - 1, 1), u.narrow(dim, n - 2, 1)
    left = first - k.flip(dim) * (second - first)
    right = last + k * (last - before)
    return torch.cat([left, u, right], dim)


# ----------------------------------------------------------------------------- upwind schemes
# Each takes v (u padded by `ghost` cells on axis dim), dx, dim, n and returns (D⁻u, D⁺u).
def _shift(v: Tensor, dim: int, ghost: int, n: int, k: int) -> Tensor:
    """u_{i+k} for i = 0..n-1 from the padded array."""
    return v.narrow(dim, ghost + k, n)


def first_order(v: Tensor, dx: float, dim: int, n: int) -> tuple[Tensor, Tensor]:
    """One-sided first differences: ``D⁻ = (u_i − u_{i−1})/dx``, ``D⁺ = (u_{i+1} − u_i)/dx``."""
    s = lambda k: _shift(v, dim, 1, n, k)  # noqa: E731
    return (s(0) - s(-1)) / dx, (s(1) - s(0)) / dx


first_order.ghost = 1


def eno2(v: Tensor, dx: float, dim: int, n: int) -> tuple[Tensor, Tensor]:
    """Second-order ENO: the first difference corrected by the smaller (in magnitude) of the
    two adjacent second differences."""
    s = lambda k: _shift(v, dim, 2, n, k)  # noqa: E731
    d2 = {k: s(k + 1) - 2 * s(k) + s(k - 1) for k in (-1, 0, 1)}
    pick = lambda a, b: torch.where(a.abs() <= b.abs(), a, b)  # noqa: E731
    dm = (s(0) - s(-1)) / dx + pick(d2[-1], d2[0]) / (2 * dx)
    dp = (s(1) - s(0)) / dx - pick(d2[0], d2[1]) / (2 * dx)
    return dm, dp


eno2.ghost = 2


def _weno5_combine(v1, v2, v3, v4, v5):
    # Jiang & Peng (2000), SIAM J. Sci. Comput. 21(6): WENO for HJ equations.
    phi1 = v1 / 3 - 7 * v2 / 6 + 11 * v3 / 6
    phi2 = -v2 / 6 + 5 * v3 / 6 + v4 / 3
    phi3 = v3 / 3 + 5 * v4 / 6 - v5 / 6
    s1 = 13 / 12 * (v1 - 2 * v2 + v3) ** 2 + 0.25 * (v1 - 4 * v2 + 3 * v3) ** 2
    s2 = 13 / 12 * (v2 - 2 * v3 + v4) ** 2 + 0.25 * (v2 - v4) ** 2
    s3 = 13 / 12 * (v3 - 2 * v4 + v5) ** 2 + 0.25 * (3 * v3 - 4 * v4 + v5) ** 2
    e = 1e-6 * torch.stack([v1 * v1, v2 * v2, v3 * v3, v4 * v4, v5 * v5]).amax(0) + 1e-99
    a1, a2, a3 = 0.1 / (s1 + e) ** 2, 0.6 / (s2 + e) ** 2, 0.3 / (s3 + e) ** 2
    return (a1 * phi1 + a2 * phi2 + a3 * phi3) / (a1 + a2 + a3)


def weno5(v: Tensor, dx: float, dim: int, n: int) -> tuple[Tensor, Tensor]:
    """Fifth-order WENO (Jiang–Peng) one-sided derivatives."""
    s = lambda k: _shift(v, dim, 3, n, k)  # noqa: E731
    d = {k: (s(k + 1) - s(k)) / dx for k in range(-3, 3)}  # d[k] = (u_{i+k+1} − u_{i+k})/dx
    dm = _weno5_combine(d[-3], d[-2], d[-1], d[0], d[1])
    dp = _weno5_combine(d[2], d[1], d[0], d[-1], d[-2])
    return dm, dp


weno5.ghost = 3


# ----------------------------------------------------------------------------- numerical H
def lax_friedrichs(H, x: Tensor, p_minus: Tensor, p_plus: Tensor, t: float) -> Tensor:
    """Global Lax–Friedrichs: ``H(x, (p⁻+p⁺)/2) − Σ_i α_i (p⁺_i − p⁻_i)/2`` with α_i the
    grid-wide bound of |∂H/∂p_i| over [min(p⁻, p⁺), max(p⁻, p⁺)]."""
    alpha = H.max_speed(x, torch.minimum(p_minus, p_plus), torch.maximum(p_minus, p_plus), t)
    return H(x, (p_minus + p_plus) / 2, t) - ((p_plus - p_minus) / 2 * alpha).sum(-1)


def godunov(H, x: Tensor, p_minus: Tensor, p_plus: Tensor, t: float) -> Tensor:
    """Godunov flux ``ext_{p⁻→p⁺} H``, from the Hamiltonian's own ``godunov`` method."""
    if not hasattr(H, "godunov"):
        raise TypeError(f"{type(H).__name__} has no godunov(x, p_minus, p_plus, t); use "
                        "numerical_hamiltonian=lax_friedrichs for it")
    return H.godunov(x, p_minus, p_plus, t)


# ----------------------------------------------------------------------------- TVD-RK
# Shu–Osher TVD Runge–Kutta; L0 = rhs(t, u) is already computed (it set the CFL step).
def tvd_rk1(rhs, t: float, u: Tensor, dt: float, L0: Tensor) -> Tensor:
    return u + dt * L0


def tvd_rk2(rhs, t, u, dt, L0):
    u1 = u + dt * L0
    return 0.5 * u + 0.5 * (u1 + dt * rhs(t + dt, u1))


def tvd_rk3(rhs, t, u, dt, L0):
    u1 = u + dt * L0
    u2 = 0.75 * u + 0.25 * (u1 + dt * rhs(t + dt, u1))
    return u / 3 + 2 / 3 * (u2 + dt * rhs(t + dt / 2, u2))


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SolverSettings:
    """Pluggable pieces of the grid solver.

    upwind_scheme: ``first_order`` | ``eno2`` | ``weno5`` (or any f(v, dx, dim, n) -> (D⁻, D⁺)
    with a ``ghost`` attribute); numerical_hamiltonian: ``godunov`` | ``lax_friedrichs``;
    time_integrator: ``tvd_rk1`` | ``tvd_rk2`` | ``tvd_rk3``; cfl: the CFL number.
    """

    upwind_scheme: Callable = weno5
    numerical_hamiltonian: Callable = lax_friedrichs
    time_integrator: Callable = tvd_rk3
    cfl: float = 0.5

    def __post_init__(self):
        if not 0 < self.cfl <= 1:
            raise ValueError(f"cfl must be in (0, 1], got {self.cfl}")
        if not hasattr(self.upwind_scheme, "ghost"):
            raise TypeError("upwind_scheme needs a `ghost` attribute (stencil half-width)")

    @classmethod
    def with_accuracy(cls, accuracy: str, **kwargs) -> "SolverSettings":
        """Presets: low (first order, RK1), medium (ENO2, RK2), high (WENO5, RK3)."""
        presets = {"low": (first_order, tvd_rk1), "medium": (eno2, tvd_rk2),
                   "high": (weno5, tvd_rk3)}
        if accuracy not in presets:
            raise ValueError(f"accuracy must be one of {sorted(presets)}, got {accuracy!r}")
        scheme, integrator = presets[accuracy]
        return cls(upwind_scheme=scheme, time_integrator=integrator, **kwargs)


# ----------------------------------------------------------------------------- solver
def gradients(settings: SolverSettings, grid: Grid, u: Tensor) -> tuple[Tensor, Tensor]:
    """One-sided gradients ``(D⁻u, D⁺u)``, each (..., *grid.shape, d)."""
    scheme, d = settings.upwind_scheme, grid.ndim
    dms, dps = [], []
    for i in range(d):
        dim = u.dim() - d + i
        v = pad(u, dim, scheme.ghost, grid.periodic[i])
        dm, dp = scheme(v, grid.spacing[i], dim, grid.shape[i])
        dms.append(dm)
        dps.append(dp)
    return torch.stack(dms, -1), torch.stack(dps, -1)


def laplacian(grid: Grid, u: Tensor) -> Tensor:
    """Central second differences summed over axes, (..., *grid.shape)."""
    d = grid.ndim
    out = torch.zeros_like(u)
    for i in range(d):
        dim = u.dim() - d + i
        v = pad(u, dim, 1, grid.periodic[i])
        n = grid.shape[i]
        out = out + (v.narrow(dim, 2, n) - 2 * u + v.narrow(dim, 0, n)) / grid.spacing[i] ** 2
    return out


def _rhs_and_rate(settings, H, grid, x, eps, t, u):
    pm, pp = gradients(settings, grid, u)
    du = -settings.numerical_hamiltonian(H, x, pm, pp, t)
    alpha = H.max_speed(x, torch.minimum(pm, pp), torch.maximum(pm, pp), t)
    rate = sum(float(a) / dx for a, dx in zip(alpha, grid.spacing))
    if eps > 0:
        du = du + eps * laplacian(grid, u)
        rate += 2 * eps * sum(1 / dx ** 2 for dx in grid.spacing)
    return du, rate


def solve(settings: SolverSettings, hamiltonian: GridHamiltonian, grid: Grid, u0: Tensor,
          times: Sequence[float], eps: float = 0.0, max_steps: int = 1_000_000) -> Tensor:
    """Integrate ``u_t + H(x, ∇u, t) = ε Δu`` from ``times[0]`` (where ``u = u0``) through each
    later time. u0: (..., *grid.shape) floating; returns (len(times), ..., *grid.shape)."""
    times = [float(s) for s in times]
    if len(times) < 1 or any(b <= a for a, b in zip(times[:-1], times[1:])):
        raise ValueError("times must be a non-empty, strictly increasing sequence")
    check_viscosity(eps)
    if not u0.is_floating_point():
        raise TypeError("u0 must be a floating-point tensor")
    if tuple(u0.shape[u0.dim() - grid.ndim:]) != tuple(grid.shape):
        raise ValueError(f"u0 must end with the grid shape {grid.shape}, got {tuple(u0.shape)}")
    if not torch.isfinite(u0).all():
        raise ValueError("u0 contains NaN or inf")
    x = grid.points(u0.dtype, u0.device)
    rhs = lambda t, u: _rhs_and_rate(settings, hamiltonian, grid, x, eps, t, u)[0]  # noqa: E731
    out, u, t, steps = [u0], u0, times[0], 0
    for t_out in times[1:]:
        while t < t_out:
            L0, rate = _rhs_and_rate(settings, hamiltonian, grid, x, eps, t, u)
            dt = min(settings.cfl / rate if rate > 0 else t_out - t, t_out - t)
            u = settings.time_integrator(rhs, t, u, dt, L0)
            t = t_out if dt == t_out - t else t + dt
            steps += 1
            if steps > max_steps:
                raise RuntimeError(f"grid solver exceeded max_steps={max_steps}; coarsen the "
                                   "grid or raise max_steps")
        if not torch.isfinite(u).all():
            raise FloatingPointError(f"grid solution became non-finite by t={t_out}; lower cfl")
        out.append(u)
    return torch.stack(out)
