"""``linear_scan``: dispatch to a backend (see hjseq/ops/_registry.py). Definition: ref.py."""
from __future__ import annotations

from torch import Tensor

from .._registry import register, resolve

OP = "linear_scan"
register(OP, "ref", "hjseq.ops.linear_scan.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.linear_scan.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.linear_scan.triton", devices=("cuda", "cpu"))
register(OP, "cuda", "hjseq.ops.linear_scan.cuda", devices=("cuda",))


def linear_scan(a: Tensor, b: Tensor, initial_state: Tensor | None = None,
                return_final_state: bool = False, cu_seqlens: Tensor | None = None,
                backend: str = "auto"):
    """``h_t = a_t ⊙ h_{t−1} + b_t`` over the last axis of (B, D, L); see ref.py."""
    kwargs = dict(a=a, b=b, initial_state=initial_state, return_final_state=return_final_state,
                  cu_seqlens=cu_seqlens)
    _, fn = resolve(OP, backend, b.device.type, **kwargs)
    return fn(**kwargs)
