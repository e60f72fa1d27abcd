"""When an op's forward should keep what only its backward reads."""
from __future__ import annotations

import torch
from torch import Tensor


def backward_can_follow(*tensors: Tensor | None) -> bool:
    """True when grad mode is on and one of ``tensors`` (None entries skipped) requires grad:
    only then may a backward run, so only then does a forward keep its intermediates."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def intermediates_for_backward(ctx, *intermediates: Tensor) -> None:
    """For a custom op's ``setup_context``: the outputs ``intermediates`` (returned only for
    the backward to read) get no gradient, and an output gradient that never arrives reaches
    the backward as None. Autograd's default would hand the backward a zero tensor the size of
    every output, the intermediates included: tens of MB allocated and filled per call. The
    backward must accept None for each of its output gradients."""
    ctx.mark_non_differentiable(*intermediates)
    ctx.set_materialize_grads(False)
