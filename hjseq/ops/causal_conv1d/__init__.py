"""``causal_conv1d``: dispatch to a backend (see hjseq/ops/_registry.py). Definition: ref.py."""
from __future__ import annotations

from torch import Tensor

from .._registry import register, resolve

OP = "causal_conv1d"
register(OP, "ref", "hjseq.ops.causal_conv1d.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.causal_conv1d.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.causal_conv1d.triton", devices=("cuda", "cpu"))
register(OP, "cuda", "hjseq.ops.causal_conv1d.cuda", devices=("cuda",))
register(OP, "mamba", "hjseq.ops.causal_conv1d.mamba", devices=("cuda",))


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  activation: str | None = None, initial_state: Tensor | None = None,
                  return_final_state: bool = False, cu_seqlens: Tensor | None = None,
                  backend: str = "auto"):
    """Depthwise causal conv over the last axis of (B, D, L); see ref.py."""
    kwargs = dict(x=x, weight=weight, bias=bias, activation=activation,
                  initial_state=initial_state, return_final_state=return_final_state,
                  cu_seqlens=cu_seqlens)
    _, fn = resolve(OP, backend, x.device.type, **kwargs)
    return fn(**kwargs)
