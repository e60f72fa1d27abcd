"""``selective_scan``: dispatch to a backend (see hjseq/ops/_registry.py). Definition: ref.py."""
from __future__ import annotations

from torch import Tensor

from .._dispatch import dispatch
from .._registry import register
from .checks import validate
from .ref import _expand_groups

OP = "selective_scan"
register(OP, "ref", "hjseq.ops.selective_scan.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.selective_scan.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.selective_scan.triton", devices=("cuda", "cpu"))
register(OP, "cuda", "hjseq.ops.selective_scan.cuda", devices=("cuda",))
register(OP, "mamba", "hjseq.ops.selective_scan.mamba", devices=("cuda",))


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   initial_state: Tensor | None = None, return_final_state: bool = False,
                   scheme: str = "euler_b", cu_seqlens: Tensor | None = None,
                   backend: str = "auto"):
    """Selective scan ``h_t = Ā_t h_{t−1} + B̄_t u_t``, ``y_t = C_t·h_t + D u_t``, gated by
    ``silu(z)``; see ref.py for the full definition, layouts and schemes.

    B, C: (B, N, L), (B, G, N, L), or time-invariant (D, N) as in S4D (mamba-ssm's
    ``selective_scan_fn`` accepts it too). Returns ``y`` (B, D, L), or ``(y, final_state)``
    with ``return_final_state``.
    Arguments are validated first (checks.py): a bad rank, shape, dtype, device, group
    count or ``cu_seqlens`` raises an error naming the argument and the expected layout.
    """
    validate(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state,
             scheme=scheme, cu_seqlens=cu_seqlens)
    if B.dim() == 2 or C.dim() == 2:
        # time-invariant (D, N) B/C: the backends see one group per channel, (B, D, N, L)
        # (broadcast views; a kernel that needs contiguous input copies them)
        batch, dim, L = u.shape
        B, C = _expand_groups(B, dim, batch, L), _expand_groups(C, dim, batch, L)
    kwargs = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                  delta_softplus=delta_softplus, initial_state=initial_state,
                  return_final_state=return_final_state, scheme=scheme, cu_seqlens=cu_seqlens)
    return dispatch(OP, backend, u.device.type, kwargs)
