"""Curvature and robustness against ε.

For ``f_ε(x) = ε log Σ_j exp((W_j·x + b_j)/ε)`` with weights π:

    ∇f = E_π[W],     ∇²f = Cov_π(W)/ε = (Σ_j π_j W_j W_jᵀ − E_π[W] E_π[W]ᵀ)/ε,
    ‖∇²f(x)‖₂ ≤ max_j |W_j|² / ε     for every x (Cov_π(W) ⪯ E_π[W Wᵀ] ⪯ max_j|W_j|² I),

so the gradient of an LSE layer is (max_j|W_j|²/ε)-Lipschitz: a small ε buys sharpness at
the price of sensitivity. :func:`worst_case_change` measures that sensitivity empirically
with a projected-gradient attack in an L2 ball; :func:`robustness_curve` sweeps it over ε.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from hjseq.nn.lse import LSELayer


def lse_gradient(layer: LSELayer, x: Tensor) -> Tensor:
    """``∇_x f = E_π[W]``: ``(..., d)``."""
    return layer.attribution_weights(x) @ layer.weight


def lse_hessian(layer: LSELayer, x: Tensor) -> Tensor:
    """``∇²_x f = Cov_π(W)/ε``: ``(..., d, d)``. Requires ε > 0 (f_0 is piecewise linear)."""
    if layer.eps == 0:
        raise ValueError("eps must be > 0: the tropical layer is piecewise linear (Hessian 0 a.e.)")
    pi = layer.attribution_weights(x)
    W = layer.weight
    mean = pi @ W
    second = torch.einsum("...n,ni,nj->...ij", pi, W, W)
    return (second - mean[..., :, None] * mean[..., None, :]) / layer.eps


def hessian_bound(layer: LSELayer) -> float:
    """``max_j |W_j|² / ε``: bounds ``‖∇²f(x)‖₂`` at every x."""
    if layer.eps == 0:
        raise ValueError("eps must be > 0 for the curvature bound")
    return float((layer.weight.detach() ** 2).sum(-1).max()) / layer.eps


@dataclass
class HessianCheck:
    """Result of :func:`check_hessian_bound` (JSON-able via ``asdict``)."""

    eps: float
    max_norm: float
    bound: float
    max_ratio: float
    n_points: int
    violated: bool

    def to_dict(self) -> dict:
        return asdict(self)


def check_hessian_bound(layer: LSELayer, x: Tensor, rtol: float = 1e-10) -> HessianCheck:
    """``‖∇²f(x_i)‖₂`` at every row of x ``(n, d)`` against ``max_j|W_j|²/ε``."""
    with torch.no_grad():
        norms = torch.linalg.matrix_norm(lse_hessian(layer, x), ord=2)
    bound = hessian_bound(layer)
    mx = float(norms.max())
    return HessianCheck(layer.eps, mx, bound, mx / bound, int(norms.numel()), mx > bound * (1 + rtol))


def worst_case_change(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    radius: float,
    *,
    steps: int = 30,
    restarts: int = 2,
    seed: int = 0,
) -> Tensor:
    """Largest ``‖fn(x + δ) − fn(x)‖₂`` found over ``‖δ‖₂ ≤ radius``, per sample.

    x ``(B, ...)``: each sample gets its own δ (same shape). Projected normalised-gradient
    ascent (PGD-L2) from ``restarts`` random points on the sphere; returns ``(B,)``, a lower
    bound on the true worst case.
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    x = x.detach()
    with torch.no_grad():
        base = fn(x)
    B = x.shape[0]

    def per_sample_norm(z: Tensor) -> Tensor:
        return z.reshape(B, -1).norm(dim=-1).reshape((B,) + (1,) * (z.dim() - 1))

    def change(z: Tensor) -> Tensor:
        return (fn(z) - base).reshape(B, -1).norm(dim=-1)

    gen = torch.Generator().manual_seed(seed)
    best = torch.zeros(B, dtype=x.dtype)
    step = radius  # large steps, then projection: a shifted power iteration for near-linear maps
    for _ in range(restarts):
        delta = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        delta = radius * delta / per_sample_norm(delta)
        for _ in range(steps):
            delta.requires_grad_(True)
            val = change(x + delta)
            (grad,) = torch.autograd.grad(val.sum(), delta)
            with torch.no_grad():
                best = torch.maximum(best, val.detach().cpu())
                delta = delta + step * grad / per_sample_norm(grad).clamp_min(1e-30)
                delta = delta * torch.clamp(radius / per_sample_norm(delta).clamp_min(1e-30), max=1.0)
        with torch.no_grad():
            best = torch.maximum(best, change(x + delta).cpu())
    return best


def robustness_curve(
    build: Callable[[float], Callable[[Tensor], Tensor]],
    x: Tensor,
    radius: float,
    eps_list: list[float],
    **attack_kwargs,
) -> list[dict]:
    """For each ε: ``build(ε)`` gives the function to attack (e.g. an LSE layer, its
    gradient map x ↦ E_π W, or an attention block); returns mean and max worst-case change
    over the rows of x, per ε."""
    out = []
    for eps in eps_list:
        fn = build(eps)
        if isinstance(fn, nn.Module):
            fn.eval()
        w = worst_case_change(fn, x, radius, **attack_kwargs)
        out.append({"eps": float(eps), "mean_change": float(w.mean()), "max_change": float(w.max())})
    return out
