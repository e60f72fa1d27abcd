"""``causal_conv1d``: dispatch to a backend (see hjseq/ops/_registry.py). Definition: ref.py."""
from __future__ import annotations

from torch import Tensor

from .._checks import check_cu_seqlens, check_tensor
from .._dispatch import dispatch
from .._registry import register

OP = "causal_conv1d"
register(OP, "ref", "hjseq.ops.causal_conv1d.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.causal_conv1d.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.causal_conv1d.triton", devices=("cuda", "cpu"))
register(OP, "mamba", "hjseq.ops.causal_conv1d.mamba", devices=("cuda",))

ACTIVATIONS = (None, "silu", "swish")


def _validate(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None,
              initial_state: Tensor | None, cu_seqlens: Tensor | None) -> None:
    check_tensor(OP, "x", x, (None, None, None), "(B, D, L)")
    Bsz, D, L = x.shape
    check_tensor(OP, "weight", weight, (D, None), "(D, W)", device=x.device)
    W = weight.shape[1]
    if W < 1:
        raise ValueError(f"{OP}: weight must have at least one tap, got shape "
                         f"{tuple(weight.shape)}")
    if bias is not None:
        check_tensor(OP, "bias", bias, (D,), "(D,)", device=x.device)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{OP}: activation must be None, 'silu' or 'swish', got {activation!r}")
    S = Bsz
    if cu_seqlens is not None:
        S = check_cu_seqlens(OP, cu_seqlens, Bsz, L)
    if initial_state is not None:
        check_tensor(OP, "initial_state", initial_state, (S, D, W - 1),
                     "(S, D, W-1) with cu_seqlens" if cu_seqlens is not None else "(B, D, W-1)",
                     device=x.device)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  activation: str | None = None, initial_state: Tensor | None = None,
                  return_final_state: bool = False, cu_seqlens: Tensor | None = None,
                  backend: str = "auto"):
    """Depthwise causal conv over the last axis of x (B, D, L) with weight (D, W), bias (D,),
    activation None | "silu" | "swish"; see ref.py for the definition.

    initial_state (B, D, W−1) is the history before x (zeros if None); with ``cu_seqlens``
    (S+1,) packing S sequences along L (batch 1) it is (S, D, W−1). Returns y (B, D, L) in
    x's dtype, or ``(y, final_state)`` (the last W−1 inputs, what ``step`` needs).
    """
    _validate(x, weight, bias, activation, initial_state, cu_seqlens)
    kwargs = dict(x=x, weight=weight, bias=bias, activation=activation,
                  initial_state=initial_state, return_final_state=return_final_state,
                  cu_seqlens=cu_seqlens)
    return dispatch(OP, backend, x.device.type, kwargs)
