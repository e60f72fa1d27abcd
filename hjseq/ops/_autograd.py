"""When an op's forward should keep what only its backward reads."""
from __future__ import annotations

import torch
from torch import Tensor


def backward_can_follow(*tensors: Tensor | None) -> bool:
    """True when grad mode is on and one of ``tensors`` (None entries skipped) requires grad:
    only then may a backward run, so only then does a forward keep its intermediates."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
