"""Fitting small LSE models (full-batch Adam on the mean squared error), for the ε lens."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from hjseq.nn.lse import LSELayer


def train_lse(
    X: Tensor,
    z: Tensor,
    n_atoms: int,
    eps: float,
    *,
    steps: int = 2000,
    lr: float = 0.01,
    seed: int = 0,
    init_weight: float = 0.5,
    init_bias: float = 0.3,
) -> LSELayer:
    """Fit ``f_ε(x) = ε log Σ_j exp((W_j·x + b_j)/ε)`` to targets z ``(n,)`` at inputs
    X ``(n, d)`` by full-batch Adam on the MSE. Init ``W ~ N(0, init_weight²/d)``,
    ``b ~ N(0, init_bias²)`` (seeded). Returns the layer in X's dtype."""
    if X.dim() != 2:
        raise ValueError(f"X must have shape (n, d), got {tuple(X.shape)}")
    if z.shape != (X.shape[0],):
        raise ValueError(f"z must have shape (n,) = ({X.shape[0]},), got {tuple(z.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    d = X.shape[1]
    layer = LSELayer(d, n_atoms, eps, dtype=X.dtype, device=X.device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_atoms, d, generator=gen, dtype=X.dtype) * init_weight / math.sqrt(d))
        layer.bias.copy_(torch.randn(n_atoms, generator=gen, dtype=X.dtype) * init_bias)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((layer(X) - z) ** 2).mean()
        loss.backward()
        opt.step()
    return layer


def rmse(pred: Tensor, target: Tensor) -> float:
    """Root-mean-square error."""
    return float(((pred - target) ** 2).mean().sqrt())
