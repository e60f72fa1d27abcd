"""Closed forms of ``u_t + |∇u|² = ε Δu`` (paper convention).

The discrete-atom formulas are ``hjseq.hopf``'s, re-exported here. This module adds:

* continuous initial data ``g`` by quadrature (composite Gauss–Legendre, tensor product in
  d ≤ 3 dimensions, panel edges at the kinks you name):

      u_ε(x, t) = −ε log ∫ (4πεt)^(−d/2) exp(−(g(y) + |x − y|²/(4t))/ε) dy     (exact solution)
      u_0(x, t) = min_y g(y) + |x − y|²/(4t)                                    (Hopf–Lax)

  For atoms, the same normalised solution is ``hopf_cole(...) + heat_constant(ε, d, t)``.
* the convex-analysis view: ``moreau_envelope`` (= u_0 with parameter λ = 2t), ``prox`` (its
  minimiser) and the soft prox ``E_π[y] = x − 2t ∇u_ε``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from hjseq import hopf

from hjseq.hopf import (  # noqa: F401  (re-exported: the discrete closed forms live there once)
    affine_from_atoms,
    atom_costs,
    atoms_from_affine,
    gibbs_weights,
    heat_constant,
    hopf_cole,
    hopf_lax,
    lse,
)

InitialData = Callable[[Tensor], Tensor]  # g: (..., d) -> (...)


def gauss_legendre_nodes(lo: float, hi: float, n_panels: int, order: int = 16,
                         breakpoints: Sequence[float] = (), dtype=torch.float64,
                         device=None) -> tuple[Tensor, Tensor]:
    """Composite Gauss–Legendre rule on [lo, hi]: ``n_panels`` equal panels, split further at
    ``breakpoints`` (put kinks of the integrand there so each panel is smooth).
    Returns nodes (M,) and weights (M,)."""
    if not hi > lo:
        raise ValueError(f"need hi > lo for the quadrature interval, got [{lo}, {hi}]")
    if n_panels < 1 or order < 1:
        raise ValueError(f"n_panels and order must be >= 1, got {n_panels}, {order}")
    edges = np.union1d(np.linspace(lo, hi, n_panels + 1),
                       [b for b in breakpoints if lo < b < hi])
    z, w = np.polynomial.legendre.leggauss(order)
    half = 0.5 * np.diff(edges)[:, None]
    mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
    nodes = (mid + half * z[None, :]).ravel()
    weights = (half * w[None, :]).ravel()
    return (torch.as_tensor(nodes, dtype=dtype, device=device),
            torch.as_tensor(weights, dtype=dtype, device=device))


def quadrature_grid(lo: Sequence[float], hi: Sequence[float], n_panels: int, order: int = 16,
                    breakpoints: Sequence[float] = (), dtype=torch.float64,
                    device=None) -> tuple[Tensor, Tensor]:
    """Tensor-product rule on the box [lo, hi] ⊂ R^d, d = len(lo) ≤ 3.
    Returns points (M, d) and log-weights (M,) (log so large sums stay in LSE form)."""
    d = len(lo)
    if len(hi) != d or not 1 <= d <= 3:
        raise ValueError(f"lo and hi must have the same length d in 1..3, got {lo}, {hi}")
    rules = [gauss_legendre_nodes(lo[i], hi[i], n_panels, order, breakpoints, dtype, device)
             for i in range(d)]
    pts = torch.cartesian_prod(*[r[0] for r in rules]).reshape(-1, d)
    logw = torch.cartesian_prod(*[r[1].log() for r in rules]).reshape(-1, d).sum(-1)
    return pts, logw


def _check_x(x: Tensor, d: int) -> None:
    if x.shape[-1] != d:
        raise ValueError(f"x must have last dimension d={d} (the quadrature box's), got {tuple(x.shape)}")


def hopf_cole_continuous(x: Tensor, g: InitialData, t: float, eps: float,
                         lo: Sequence[float], hi: Sequence[float], n_panels: int = 64,
                         order: int = 16, breakpoints: Sequence[float] = ()) -> Tensor:
    """Exact viscous solution ``u_ε(x, t)`` for continuous initial data ``g`` by quadrature
    over the box [lo, hi] (it must hold the mass of ``exp(−(g(y) + |x−y|²/4t)/ε)``).
    x: (..., d); returns (...)."""
    if not t > 0 or not eps > 0:
        raise ValueError(f"need t > 0 and eps > 0, got t={t}, eps={eps}")
    d = len(lo)
    _check_x(x, d)
    y, logw = quadrature_grid(lo, hi, n_panels, order, breakpoints, x.dtype, x.device)
    cost = g(y) + ((x.unsqueeze(-2) - y) ** 2).sum(-1) / (4 * t)  # (..., M)
    log_norm = -0.5 * d * math.log(4 * math.pi * eps * t)
    return -hopf.smooth_max(eps * logw - cost, eps) - eps * log_norm


def hopf_lax_continuous(x: Tensor, g: InitialData, t: float, lo: Sequence[float],
                        hi: Sequence[float], n: int = 4001) -> Tensor:
    """``u_0(x, t) = min_y g(y) + |x − y|²/(4t)`` over a uniform grid of n points per axis in
    [lo, hi]: error O(h²) at a smooth minimiser, O(h) at a kink not on a node (h the grid
    step; put kinks of g on nodes).
    x: (..., d); returns (...)."""
    d = len(lo)
    _check_x(x, d)
    axes = [torch.linspace(lo[i], hi[i], n, dtype=x.dtype, device=x.device) for i in range(d)]
    y = torch.cartesian_prod(*axes).reshape(-1, d)
    cost = g(y) + ((x.unsqueeze(-2) - y) ** 2).sum(-1) / (4 * t)
    return cost.min(-1).values


def moreau_envelope(x: Tensor, y: Tensor, g: Tensor, lam: float) -> Tensor:
    """Moreau envelope ``e_λ g(x) = min_j g_j + |x − y_j|²/(2λ)`` of atoms (y_j, g_j);
    equals the Hopf–Lax solution ``u_0(x, t)`` at ``λ = 2t``. x: (..., d); returns (...)."""
    if not lam > 0:
        raise ValueError(f"lam must be > 0 (Moreau parameter, = 2t), got {lam}")
    return hopf_lax(x, y, g, lam / 2)


def prox(x: Tensor, y: Tensor, g: Tensor, lam: float) -> Tensor:
    """Proximal point ``argmin_{y_j} g_j + |x − y_j|²/(2λ)`` (the hard ε → 0 limit of the
    soft prox). x: (..., d); returns (..., d)."""
    if not lam > 0:
        raise ValueError(f"lam must be > 0 (Moreau parameter, = 2t), got {lam}")
    return y[atom_costs(x, y, g, lam / 2).argmin(-1)]


def soft_prox(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
    """Soft prox ``E_π[y] = Σ_j π_j(x) y_j`` with Gibbs weights π (= ``x − 2t ∇u_ε(x, t)``).
    x: (..., d); returns (..., d). ``eps == 0`` gives the hard prox."""
    return gibbs_weights(x, y, g, t, eps) @ y
