"""Batched ODE integrators for ``dy/dt = f(t, y)`` (torchdiffeq-style registry).

``SOLVERS = {name: cls}`` holds fixed-grid methods (``euler``, ``midpoint``, ``rk4``) and
the adaptive embedded Dormand–Prince 5(4) (``dopri5``). A fixed-grid method is a class with
an ``order`` and one ``step``; an adaptive method is a Butcher tableau held as data plus one
generic error-controlled stepper.

``y`` is any tensor (a batch of states is just a bigger tensor); float32 and float64 on any
device. Time is carried as Python floats, so one step size is shared by the whole batch and
the error norm is the max over every component (no characteristic is under-resolved
because its neighbours are easy).

    ys = odeint(f, y0, t, method="dopri5", rtol=1e-9, atol=1e-12)   # ys: (len(t), *y0.shape)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

VectorField = Callable[[float, Tensor], Tensor]


@dataclass
class ODEStats:
    """Work counters of one ``integrate`` call."""

    nfe: int = 0  # evaluations of f
    n_accepted: int = 0
    n_rejected: int = 0


@dataclass
class ODEResult:
    """``ys``: (T, *y0.shape), the solution at each requested time; ``stats``: the work."""

    ys: Tensor
    stats: ODEStats = field(default_factory=ODEStats)


class _Counted:
    """Wraps f to count evaluations."""

    def __init__(self, f: VectorField, stats: ODEStats):
        self.f, self.stats = f, stats

    def __call__(self, t: float, y: Tensor) -> Tensor:
        self.stats.nfe += 1
        return self.f(t, y)


# ----------------------------------------------------------------------------- fixed grid
class FixedGridSolver:
    """Advance with a constant step between output times.

    Options: ``step_size`` (the largest step; each output interval is split into the fewest
    equal steps not larger than it) or ``n_steps`` (steps per output interval). Default: one
    step per interval.
    """

    order: int = 0

    def __init__(self, step_size: float | None = None, n_steps: int | None = None):
        if step_size is not None and n_steps is not None:
            raise ValueError("give step_size or n_steps, not both")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        if n_steps is not None and n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.step_size, self.n_steps = step_size, n_steps

    def step(self, f: VectorField, t: float, dt: float, y: Tensor) -> Tensor:
        raise NotImplementedError  # each subclass is one method's step

    def integrate(self, f: VectorField, y0: Tensor, times: list[float]) -> ODEResult:
        stats = ODEStats()
        fc = _Counted(f, stats)
        ys, y = [y0], y0
        for t0, t1 in zip(times[:-1], times[1:]):
            n = self.n_steps or (max(1, math.ceil(abs(t1 - t0) / self.step_size - 1e-12))
                                 if self.step_size else 1)
            dt = (t1 - t0) / n
            for i in range(n):
                y = self.step(fc, t0 + i * dt, dt, y)
                stats.n_accepted += 1
            ys.append(y)
        return ODEResult(torch.stack(ys), stats)


class Euler(FixedGridSolver):
    """``y + dt f(t, y)``: order 1."""

    order = 1

    def step(self, f, t, dt, y):
        return y + dt * f(t, y)


class Midpoint(FixedGridSolver):
    """Explicit midpoint ``y + dt f(t + dt/2, y + dt/2 f(t, y))``: order 2."""

    order = 2

    def step(self, f, t, dt, y):
        return y + dt * f(t + dt / 2, y + dt / 2 * f(t, y))


class RK4(FixedGridSolver):
    """Classical fourth-order Runge–Kutta (the 3/8-free 1/6, 1/3, 1/3, 1/6 rule): order 4."""

    order = 4

    def step(self, f, t, dt, y):
        k1 = f(t, y)
        k2 = f(t + dt / 2, y + dt / 2 * k1)
        k3 = f(t + dt / 2, y + dt / 2 * k2)
        k4 = f(t + dt, y + dt * k3)
        return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


# ----------------------------------------------------------------------------- adaptive
@dataclass(frozen=True)
class ButcherTableau:
    """Explicit embedded Runge–Kutta pair: nodes ``c``, matrix rows ``a`` (lower-triangular,
    row i has i entries), solution weights ``b`` (order ``order``) and the weights of the
    embedded lower-order solution ``b_low``; ``fsal``: the last stage is f at the new point."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_low: tuple[float, ...]
    order: int
    fsal: bool = False


DOPRI5_TABLEAU = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((),
       (1 / 5,),
       (3 / 40, 9 / 40),
       (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_low=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    order=5,
    fsal=True,
)


class AdaptiveRKSolver:
    """Error-controlled embedded Runge–Kutta: accept a step when
    ``max_i |err_i| / (atol + rtol·max(|y_i|, |y_new_i|)) ≤ 1`` and scale the step by
    ``safety · ratio^(−1/order)`` (clipped to [0.2, 10]); output times are hit exactly."""

    tableau: ButcherTableau
    order: int

    def __init__(self, rtol: float = 1e-7, atol: float = 1e-9, first_step: float | None = None,
                 max_steps: int = 1_000_000, safety: float = 0.9):
        if not rtol >= 0 or not atol >= 0 or rtol + atol == 0:
            raise ValueError(f"rtol and atol must be >= 0 and not both 0, got {rtol}, {atol}")
        self.rtol, self.atol, self.first_step = rtol, atol, first_step
        self.max_steps, self.safety = max_steps, safety

    def _error_ratio(self, err: Tensor, y0: Tensor, y1: Tensor) -> float:
        scale = self.atol + self.rtol * torch.maximum(y0.abs(), y1.abs())
        return float((err.abs() / scale).max()) if err.numel() else 0.0

    def _initial_step(self, f, t0: float, y0: Tensor, f0: Tensor, direction: float) -> float:
        # Hairer, Nørsett & Wanner, Solving ODEs I, §II.4 (starting step size).
        scale = self.atol + self.rtol * y0.abs()
        d0 = float((y0 / scale).pow(2).mean().sqrt())
        d1 = float((f0 / scale).pow(2).mean().sqrt())
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = f(t0 + direction * h0, y0 + direction * h0 * f0)
        d2 = float(((f1 - f0) / scale).pow(2).mean().sqrt()) / h0
        h1 = (max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15
              else (0.01 / max(d1, d2)) ** (1.0 / (self.order + 1)))
        return min(100 * h0, h1)

    def _try_step(self, f, t: float, dt: float, y: Tensor, k0: Tensor):
        tab = self.tableau
        ks = [k0]
        for ci, row in zip(tab.c[1:], tab.a[1:]):
            yi = y + dt * sum(aij * kj for aij, kj in zip(row, ks) if aij != 0.0)
            ks.append(f(t + ci * dt, yi))
        y_new = y + dt * sum(bi * ki for bi, ki in zip(tab.b, ks) if bi != 0.0)
        err = dt * sum((bi - bl) * ki for bi, bl, ki in zip(tab.b, tab.b_low, ks)
                       if bi - bl != 0.0)
        k_last = ks[-1] if tab.fsal else None
        return y_new, err, k_last

    def integrate(self, f: VectorField, y0: Tensor, times: list[float]) -> ODEResult:
        stats = ODEStats()
        fc = _Counted(f, stats)
        ys, y, t = [y0], y0, times[0]
        if len(times) < 2:
            return ODEResult(torch.stack(ys), stats)
        direction = 1.0 if times[-1] >= times[0] else -1.0
        k0 = fc(t, y)
        if not torch.isfinite(k0).all():
            raise FloatingPointError(f"non-finite vector field f(t, y0) at t={t}")
        dt = self.first_step or self._initial_step(fc, t, y, k0, direction)
        for t_out in times[1:]:
            while direction * (t_out - t) > 0:
                if stats.n_accepted + stats.n_rejected >= self.max_steps:
                    raise RuntimeError(f"ODE solver exceeded max_steps={self.max_steps} at "
                                       f"t={t}; loosen rtol/atol or raise max_steps")
                remaining = abs(t_out - t)
                last = dt >= remaining * (1 - 1e-12)
                h = remaining if last else dt
                y_new, err, k_last = self._try_step(fc, t, direction * h, y, k0)
                ratio = self._error_ratio(err, y, y_new)
                if not math.isfinite(ratio):
                    raise FloatingPointError(f"non-finite state or error at t={t}")
                if ratio <= 1.0:
                    stats.n_accepted += 1
                    t = t_out if last else t + direction * h
                    y = y_new
                    k0 = k_last if k_last is not None else fc(t, y)
                factor = 10.0 if ratio == 0 else min(10.0, max(0.2, self.safety * ratio ** (-1.0 / self.order)))
                if ratio > 1.0:
                    stats.n_rejected += 1
                    factor = min(factor, 1.0)
                    dt = h * factor
                elif not last:  # keep the controller's step, not the clipped final piece
                    dt = h * factor
            ys.append(y)
        return ODEResult(torch.stack(ys), stats)


class Dopri5(AdaptiveRKSolver):
    """Dormand–Prince 5(4) with first-same-as-last; local extrapolation (5th-order solution)."""

    tableau = DOPRI5_TABLEAU
    order = 5


SOLVERS: dict[str, type] = {
    "euler": Euler,
    "midpoint": Midpoint,
    "rk4": RK4,
    "dopri5": Dopri5,
}


def make_solver(method: str, rtol: float = 1e-7, atol: float = 1e-9, **options):
    """Instantiate ``SOLVERS[method]``: adaptive ones take rtol/atol (+ first_step,
    max_steps), fixed-grid ones take ``step_size`` or ``n_steps``."""
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {sorted(SOLVERS)}, got {method!r}")
    cls = SOLVERS[method]
    if issubclass(cls, AdaptiveRKSolver):
        return cls(rtol=rtol, atol=atol, **options)
    return cls(**options)


def _check_times(t) -> list[float]:
    times = [float(v) for v in (t.tolist() if isinstance(t, Tensor) else t)]
    if len(times) < 1:
        raise ValueError("t must hold at least one time")
    diffs = [b - a for a, b in zip(times[:-1], times[1:])]
    if diffs and not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        raise ValueError("t must be strictly increasing or strictly decreasing")
    if not all(math.isfinite(v) for v in times):
        raise ValueError("t must be finite")
    return times


def integrate(f: VectorField, y0: Tensor, t, method: str = "dopri5", rtol: float = 1e-7,
              atol: float = 1e-9, **options) -> ODEResult:
    """Solve ``dy/dt = f(t, y)``, ``y(t[0]) = y0``; returns ``ODEResult`` with
    ``ys``: (len(t), *y0.shape) and the work counters. ``t``: 1-D tensor or sequence of
    floats, strictly monotone. ``f(t: float, y: Tensor) -> Tensor`` of y's shape."""
    if not isinstance(y0, Tensor) or not y0.is_floating_point():
        raise TypeError("y0 must be a floating-point tensor (float32 or float64)")
    if not torch.isfinite(y0).all():
        raise ValueError("y0 contains NaN or inf")
    return make_solver(method, rtol, atol, **options).integrate(f, y0, _check_times(t))


def odeint(f: VectorField, y0: Tensor, t, method: str = "dopri5", rtol: float = 1e-7,
           atol: float = 1e-9, **options) -> Tensor:
    """torchdiffeq-style: the solution at each time of ``t``, shape (len(t), *y0.shape)."""
    return integrate(f, y0, t, method, rtol, atol, **options).ys
