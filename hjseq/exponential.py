"""φ-functions of exponential integrators, written once for every scheme and kernel reference.

``φ₁(z) = (eᶻ − 1)/z`` (``φ₁(0) = 1``) is the input factor of the exact flow of the linear
field ``ḣ = a h + b`` with b held over a step Δ: ``h(Δ) = e^{Δa} h(0) + Δ φ₁(Δa) b``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def phi1(x: Tensor) -> Tensor:
    """``φ₁(x) = (eˣ − 1)/x`` with ``φ₁(0) = 1``, accurate with its derivative everywhere.

    Autograd through ``expm1(x)/x`` cancels catastrophically as x → 0 (its derivative is a
    difference of terms of size 1/x and 1/x²), so |x| < 0.5 uses the Taylor series
    ``Σ_k x^k/(k+1)!`` (16 terms: truncation < 1e-19) in Horner form."""
    small = x.abs() < 0.5
    safe = torch.where(small, torch.ones_like(x), x)
    taylor = torch.ones_like(x)
    for k in range(16, 0, -1):  # 1 + x/2 (1 + x/3 (1 + ... (1 + x/17)))
        taylor = 1 + x / (k + 1) * taylor
    return torch.where(small, taylor, torch.expm1(safe) / safe)


__all__ = ["phi1"]
