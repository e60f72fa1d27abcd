"""``selective_state_update``: one decoding step of the selective scan, dispatched to a
backend (see hjseq/ops/_registry.py). Definition: ref.py."""
from __future__ import annotations

from torch import Tensor

from .._dispatch import dispatch
from .._registry import register
from .ref import check_inputs

OP = "selective_state_update"
register(OP, "ref", "hjseq.ops.selective_state_update.ref", devices=("cpu", "cuda"))
register(OP, "triton", "hjseq.ops.selective_state_update.triton", devices=("cuda", "cpu"))
register(OP, "mamba", "hjseq.ops.selective_state_update.mamba", devices=("cuda",))


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                           C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                           dt_bias: Tensor | None = None, dt_softplus: bool = False,
                           scheme: str = "euler_b", backend: str = "auto") -> tuple[Tensor, Tensor]:
    """``h' = Ā h + B̄ x``, ``out = (C·h' + D x) ⊙ silu(z)`` for one token.

    state (B, D, N); x, dt, z (B, D); A (D, N); B, C (B, N) or (B, G, N); D, dt_bias (D,).
    Returns ``(out (B, D), new_state (B, D, N))``; the input state is left unchanged.
    Arguments are checked first (ref.check_inputs): a wrong shape, dtype or device raises an
    error naming the argument.
    """
    check_inputs(state, x, dt, A, B, C, D, z, dt_bias, scheme)
    kwargs = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                  dt_softplus=dt_softplus, scheme=scheme)
    return dispatch(OP, backend, x.device.type, kwargs)
