"""B/C group layouts shared by the GPU backends of ``selective_scan``: the kernels read
(B, G, N, L); a 3-D (B, N, L) input is the same for every group."""
from __future__ import annotations

import torch
from torch import Tensor


def n_groups(B: Tensor, C: Tensor) -> int:
    """Number of groups of the call (a 3-D B or C counts as one, shared by all)."""
    return max(X.shape[1] if X.dim() == 4 else 1 for X in (B, C))


def as4d(X: Tensor, groups: int) -> Tensor:
    """(B, N, L) -> (B, G, N, L) broadcast view (stride 0 over G, no copy); 4-D unchanged."""
    return X.unsqueeze(1).expand(X.shape[0], groups, *X.shape[1:]) if X.dim() == 3 else X


def from4d(dX4: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """Gradient through :func:`as4d` for an input of ``dim`` dims: a 3-D input sums the
    broadcast group axis back."""
    return (dX4.sum(1) if dim == 3 else dX4).to(dtype)
