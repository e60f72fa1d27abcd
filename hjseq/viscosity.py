"""The viscosity ε ≥ 0 and its one validity check, used by every block, scheme, closed form
and solver (``hjseq.spec`` re-exports it)."""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

Viscosity = Union[float, Tensor]


def check_viscosity(viscosity: Viscosity, name: str = "eps") -> Viscosity:
    """Validate ε ≥ 0 (float, tensor or parameter) and return it (floats as float). The one
    viscosity check of hjseq: every block, solver and closed form calls it."""
    if isinstance(viscosity, Tensor):
        if not torch.is_floating_point(viscosity):
            raise TypeError(f"{name} (viscosity) must be a floating tensor, got {viscosity.dtype}")
        v = viscosity.detach()
        if torch.isnan(v).any() or (v < 0).any():
            raise ValueError(f"{name} (viscosity) must be >= 0 everywhere (no NaN); "
                             f"got min {v.min().item() if v.numel() else 'n/a'}")
        return viscosity
    if isinstance(viscosity, bool):
        raise TypeError(f"{name} (viscosity) must be a float or a tensor, got bool")
    try:
        value = float(viscosity)
    except (TypeError, ValueError):
        raise TypeError(f"{name} (viscosity) must be a float or a tensor, got "
                        f"{type(viscosity).__name__}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} (viscosity) must be a finite number >= 0, got {value}")
    return value
