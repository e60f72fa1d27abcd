"""Viscosity ε > 0: stochastic characteristics and the Feynman–Kac value.

Stochastic characteristics of a recurrent block: ``dh = F(h) dt + √(2ε) dW``,
integrated by Euler–Maruyama with a seeded generator, many paths as one batch.

Feynman–Kac for the block's stochastic characteristics ``dX = F(X) ds + √(2ε) dW``,
``X_0 = x`` (F time-independent): ``u(x, t) = E[g(X_t)]`` solves the linear HJ equation

    u_t + H(x, ∇u) = ε Δu,   H(x, p) = −F(x)·p,   u(·, 0) = g.

For the quadratic Hamiltonian (Hopf–Cole): ``u_t + |∇u|² = εΔu`` ⇒
``u(x, t) = −ε log E[exp(−g(x + √(2ε) W_t)/ε)]``.

Every estimate comes with its Monte-Carlo standard error (sample std / √n; for the Hopf–Cole
transform by the delta method, ``se_u = ε·se_w/w``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from hjseq.viscosity import check_viscosity


@dataclass
class MonteCarloEstimate:
    """value and stderr: (B,); n_paths: paths per point."""

    value: Tensor
    stderr: Tensor
    n_paths: int


def _generator(seed: int, device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def euler_maruyama(drift: Callable[[float, Tensor], Tensor], x0: Tensor, t0: float, t1: float,
                   eps: float, n_steps: int, seed: int = 0,
                   return_path: bool = False) -> Tensor:
    """Euler–Maruyama for ``dX = drift(t, X) dt + √(2ε) dW`` from ``X(t0) = x0`` to ``t1``.

    x0: (P, ...) — every row an independent path (repeat a start point to get many paths).
    Returns X(t1) (P, ...) or, with ``return_path``, (n_steps+1, P, ...). Seeded: the same
    seed gives the same paths on the same device."""
    check_viscosity(eps)
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not x0.is_floating_point():
        raise TypeError("x0 must be a floating tensor")
    gen = _generator(seed, x0.device)
    dt = (t1 - t0) / n_steps
    sigma = math.sqrt(2 * eps * abs(dt))
    x, path = x0, [x0]
    for i in range(n_steps):
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        x = x + dt * drift(t0 + i * dt, x) + sigma * noise
        if return_path:
            path.append(x)
    return torch.stack(path) if return_path else x


def stochastic_characteristics(rhs: Callable[[int, Tensor], Tensor], h0: Tensor, n_tokens: int,
                               eps: float, dt: float = 1.0, n_sub: int = 1,
                               seed: int = 0) -> Tensor:
    """Noisy characteristics of a recurrent block: token k integrates
    ``dh = rhs(k, h) dτ + √(2ε·dt) dW_τ`` over τ ∈ [0, 1] in ``n_sub`` Euler–Maruyama steps
    (``rhs``: a characteristics view's field in normalised token time; ``dt``: the block's
    nominal step, so one token carries noise variance 2ε·dt as in the engine).

    h0: (B, S), one path per row (build the view on the input repeated to get many paths).
    Returns (B, n_tokens+1, S). With n_sub = 1 this is the engine's noisy Euler step."""
    if n_tokens < 0 or n_sub < 1:
        raise ValueError(f"need n_tokens >= 0 and n_sub >= 1, got {n_tokens}, {n_sub}")
    if not eps >= 0 or not dt > 0:
        raise ValueError(f"need eps >= 0 and dt > 0, got eps={eps}, dt={dt}")
    gen = _generator(seed, h0.device)
    sigma = math.sqrt(2 * eps * dt / n_sub)
    h, out = h0, [h0]
    for k in range(n_tokens):
        for _ in range(n_sub):
            noise = torch.randn(h.shape, generator=gen, dtype=h.dtype, device=h.device)
            h = h + rhs(k, h) / n_sub + sigma * noise
        out.append(h)
    return torch.stack(out, 1)


def feynman_kac(g: Callable[[Tensor], Tensor], x: Tensor, t: float, eps: float,
                drift: Callable[[Tensor], Tensor] | None = None, n_paths: int = 10_000,
                n_steps: int = 100, seed: int = 0, hopf_cole: bool = False) -> MonteCarloEstimate:
    """Monte-Carlo value of the viscous HJ solution at points x (B, d) and time t > 0.

    ``drift`` F given: ``u_t − F(x)·∇u = εΔu`` by ``u = E g(X_t)`` over Euler–Maruyama paths
    ``dX = F dt + √(2ε) dW`` (``n_steps`` steps). ``hopf_cole=True`` (no drift): the
    quadratic equation ``u_t + |∇u|² = εΔu`` by ``u = −ε log E exp(−g(x + √(2ε)W_t)/ε)``
    (exact Brownian increments, no time stepping). g: (..., d) -> (...).
    Returns value and standard error per point, (B,)."""
    if x.dim() != 2:
        raise ValueError(f"x must be (B, d) points, got shape {tuple(x.shape)}")
    if not t > 0 or not eps > 0:
        raise ValueError(f"need t > 0 and eps > 0, got t={t}, eps={eps}")
    if hopf_cole == (drift is not None):
        raise ValueError("give a drift (linear equation) or hopf_cole=True "
                         "(quadratic equation), exactly one")
    if n_paths < 2:
        raise ValueError(f"n_paths must be >= 2 for a standard error, got {n_paths}")
    B, d = x.shape
    X0 = x.unsqueeze(0).expand(n_paths, B, d).reshape(n_paths * B, d)
    if hopf_cole:
        gen = _generator(seed, x.device)
        XT = X0 + math.sqrt(2 * eps * t) * torch.randn(X0.shape, generator=gen, dtype=x.dtype,
                                                       device=x.device)
        samples = g(XT).reshape(n_paths, B)
        # w = E exp(−(g − m)/ε) with the per-point shift m for range safety
        m = samples.min(0).values
        w = torch.exp(-(samples - m) / eps)
        mean, se = w.mean(0), w.std(0) / math.sqrt(n_paths)
        return MonteCarloEstimate(m - eps * torch.log(mean), eps * se / mean, n_paths)
    XT = euler_maruyama(lambda s, X: drift(X), X0, 0.0, t, eps, n_steps, seed)
    samples = g(XT).reshape(n_paths, B)
    return MonteCarloEstimate(samples.mean(0), samples.std(0) / math.sqrt(n_paths), n_paths)
