"""Closed forms of the quadratic HJ equation ``u_t + |∇u|² = ε Δu`` (paper convention).

Shared by the ``hopf_cole`` scheme, the LSE and attention blocks, the solver and the
analysis tools; the executable definitions live here once.

Atoms ``(y_j, g_j)``, j = 1..N, with y: (N, d), g: (N,), x: (..., d), t > 0, ε ≥ 0:

    u_ε(x, t) = −ε log Σ_j exp(−(g_j + |x − y_j|²/(4t)) / ε)         (discrete Hopf–Cole)
    u_0(x, t) = min_j (g_j + |x − y_j|²/(4t))                        (Hopf–Lax, ε → 0)
    π_j(x)    = softmax_j(−(g_j + |x − y_j|²/(4t)) / ε)               (Gibbs / attribution weights)

and the affine (LSE layer) form ``f_ε(x) = ε log Σ_j exp((W_j·x + b_j)/ε)`` with
``W_j = y_j/(2t)``, ``b_j = −g_j − |y_j|²/(4t)`` satisfies ``f_ε(x) + u_ε(x,t) = |x|²/(4t)``.
``u_ε`` solves the PDE up to the constant ``−εd/(2t)``; ``u_ε + heat_constant`` solves it
exactly. A masked atom has ``g_j = +inf`` and weight 0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .viscosity import check_viscosity


def smooth_max(s: Tensor, eps: float, dim: int = -1) -> Tensor:
    """``ε log Σ_j exp(s_j/ε)`` over ``dim`` — the log-sum-exp of every LSE unit, attention
    normaliser and Hopf–Cole value in hjseq, written once; ``eps == 0`` gives ``max_j s_j``
    (the tropical limit). ``s == −inf`` entries (masked atoms) contribute nothing."""
    if eps == 0:
        return s.amax(dim)
    return eps * torch.logsumexp(s / eps, dim=dim)


def gibbs(s: Tensor, eps: float, dim: int = -1) -> Tensor:
    """``softmax(s/ε)`` over ``dim``: the Gibbs / attribution weights of scores s (the
    gradient of :func:`smooth_max`). ``eps == 0``: the limit ε → 0, mass split evenly over
    the exact maximisers — the one tie rule of every block (LSE, attention, Hopf–Lax)."""
    if eps == 0:
        top = s == s.amax(dim, keepdim=True)
        return top.to(s.dtype) / top.sum(dim, keepdim=True).to(s.dtype)
    return torch.softmax(s / eps, dim=dim)


def affine_from_atoms(y: Tensor, g: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """``(W, b)`` with ``W_j = y_j/(2t)``, ``b_j = −g_j − |y_j|²/(4t)``. y: (N, d), g: (N,)."""
    _check_t(t)
    return y / (2 * t), -g - (y * y).sum(-1) / (4 * t)


def atoms_from_affine(W: Tensor, b: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """Inverse map: ``y_j = 2t W_j``, ``g_j = −b_j − t|W_j|²``. W: (N, d), b: (N,)."""
    _check_t(t)
    return 2 * t * W, -b - t * (W * W).sum(-1)


def atom_costs(x: Tensor, y: Tensor, g: Tensor, t: float) -> Tensor:
    """``g_j + |x − y_j|²/(4t)``: shape (..., N). Computed from differences (no cancellation)."""
    _check_t(t)
    diff = x.unsqueeze(-2) - y
    return g + (diff * diff).sum(-1) / (4 * t)


def hopf_cole(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
    """``u_ε(x, t)`` for discrete atoms; ``eps == 0`` gives the Hopf–Lax minimum. Shape (...)."""
    _check_eps(eps)
    return -smooth_max(-atom_costs(x, y, g, t), eps)


def hopf_lax(x: Tensor, y: Tensor, g: Tensor, t: float) -> Tensor:
    """``u_0(x, t) = min_j (g_j + |x − y_j|²/(4t))``. Shape (...)."""
    return atom_costs(x, y, g, t).min(-1).values


def gibbs_weights(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
    """``π_j(x)``: shape (..., N), rows sum to 1; ``eps == 0`` splits the mass evenly over
    the minimising atoms (:func:`gibbs`)."""
    _check_eps(eps)
    return gibbs(-atom_costs(x, y, g, t), eps)


def lse(x: Tensor, W: Tensor, b: Tensor, eps: float) -> Tensor:
    """``f_ε(x) = ε log Σ_j exp((W_j·x + b_j)/ε)``; ``eps == 0`` gives ``max_j``. Shape (...)."""
    _check_eps(eps)
    return smooth_max(x @ W.transpose(-1, -2) + b, eps)


def heat_constant(eps: float, d: int, t: float) -> float:
    """``(εd/2)·log(4πεt)``: added to the discrete Hopf–Cole ``u_ε`` it solves the PDE exactly."""
    _check_t(t)
    if eps <= 0:
        raise ValueError(f"eps must be > 0 for the heat-kernel constant, got {eps}")
    return 0.5 * eps * d * math.log(4 * math.pi * eps * t)


def _check_t(t: float) -> None:
    if not t > 0:
        raise ValueError(f"t must be > 0 (time of the HJ flow), got {t}")


def _check_eps(eps: float) -> None:
    check_viscosity(eps)
