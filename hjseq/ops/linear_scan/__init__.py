"""``linear_scan``: dispatch to a backend (see hjseq/ops/_registry.py). Definition: ref.py."""
from __future__ import annotations

from torch import Tensor

from .._checks import check_cu_seqlens, check_tensor
from .._dispatch import dispatch
from .._registry import register

OP = "linear_scan"
register(OP, "ref", "hjseq.ops.linear_scan.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.linear_scan.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.linear_scan.triton", devices=("cuda", "cpu"))
register(OP, "cuda", "hjseq.ops.linear_scan.cuda", devices=("cuda",))


def _validate(a: Tensor, b: Tensor, initial_state: Tensor | None,
              cu_seqlens: Tensor | None) -> None:
    check_tensor(OP, "b", b, (None, None, None), "(B, D, L)")
    Bsz, D, L = b.shape
    check_tensor(OP, "a", a, (Bsz, D, L), "(B, D, L) like b", dtype=b.dtype, device=b.device)
    S = Bsz
    if cu_seqlens is not None:
        S = check_cu_seqlens(OP, cu_seqlens, Bsz, L)
    if initial_state is not None:
        check_tensor(OP, "initial_state", initial_state, (S, D),
                     "(S, D) with cu_seqlens" if cu_seqlens is not None else "(B, D)",
                     device=b.device)


def linear_scan(a: Tensor, b: Tensor, initial_state: Tensor | None = None,
                return_final_state: bool = False, cu_seqlens: Tensor | None = None,
                backend: str = "auto"):
    """``h_t = a_t ⊙ h_{t−1} + b_t`` over the last axis of a, b (B, D, L); see ref.py.

    initial_state (B, D) (or (S, D) with ``cu_seqlens`` (S+1,) packing S sequences along L,
    batch 1). Returns h (B, D, L) in b's dtype, or ``(h, final_state)`` with
    ``return_final_state`` (final state in float32, float64 for float64 inputs).
    """
    _validate(a, b, initial_state, cu_seqlens)
    kwargs = dict(a=a, b=b, initial_state=initial_state, return_final_state=return_final_state,
                  cu_seqlens=cu_seqlens)
    return dispatch(OP, backend, b.device.type, kwargs)
