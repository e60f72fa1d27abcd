"""``selective_state_update``: one decoding step of the selective scan, dispatched to a
backend (see hjseq/ops/_registry.py). Definition: ref.py."""
from __future__ import annotations

from torch import Tensor

from .._dispatch import dispatch
from .._registry import register
from .ref import check_inputs

OP = "selective_state_update"
register(OP, "ref", "hjseq.ops.selective_state_update.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.selective_state_update.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.selective_state_update.triton", devices=("cuda", "cpu"))
register(OP, "mamba", "hjseq.ops.selective_state_update.mamba", devices=("cuda",))


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                           C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                           dt_bias: Tensor | None = None, dt_softplus: bool = False,
                           scheme: str = "euler_b", backend: str = "auto",
                           state_batch_indices: Tensor | None = None,
                           inplace: bool = False) -> tuple[Tensor, Tensor]:
    """``h' = Ā h + B̄ x``, ``out = (C·h' + D x) ⊙ silu(z)`` for one token.

    Channels layout: state (S, D, N); x, dt, z (B, D); A (D, N); B, C (B, N) or (B, G, N);
    D, dt_bias (D,). Heads layout (Mamba-2): state (S, H, P, N); x, dt, z (B, H, P);
    A (H, P, N); B, C (B, G, N); D, dt_bias (H, P) (A/dt/D/dt_bias may be stride-0 "tied"
    over P and N). ``state_batch_indices`` (B,): row b uses state row ``[b]`` of the pool
    (S = B without it). Returns ``(out, new_state)``; ``inplace=True`` updates ``state``
    itself and returns it (mamba-ssm's behaviour), otherwise ``state`` is left unchanged.
    Arguments are checked first (ref.check_inputs): a wrong shape, dtype or device raises an
    error naming the argument and the sizes expected.
    """
    check_inputs(state, x, dt, A, B, C, D, z, dt_bias, scheme, state_batch_indices)
    kwargs = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                  dt_softplus=dt_softplus, scheme=scheme,
                  state_batch_indices=state_batch_indices, inplace=inplace)
    return dispatch(OP, backend, x.device.type, kwargs)
