"""Argument checks shared by the GPU backends of ``selective_scan`` (triton, cuda): the
kernels index memory from these shapes, so a malformed call must fail here, by name."""
from __future__ import annotations

from torch import Tensor

from .._checks import check_cu_seqlens, check_tensor
from .._triton_common import same_device

OP = "selective_scan"


def check_args(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
               z: Tensor | None, delta_bias: Tensor | None, initial_state: Tensor | None,
               scheme: str, cu_seqlens: Tensor | None) -> int:
    """Raise a clear error for a malformed call; return the number of sequences
    (B, or S with ``cu_seqlens``)."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if t is not None:
            check_tensor(OP, name, t)  # a floating tensor
    if u.dim() != 3:
        raise ValueError(f"{OP}: u must be (B, D, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"{OP}: {name} must have u's shape {tuple(u.shape)}, "
                             f"got {tuple(t.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"{OP}: A must be (D, N) = ({dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, X in (("B", B), ("C", C)):
        ok = (X.dim() == 3 and X.shape == (batch, N, L)) or (
            X.dim() == 4 and X.shape[0] == batch and X.shape[2:] == (N, L)
            and X.shape[1] > 0 and dim % X.shape[1] == 0)
        if not ok:
            raise ValueError(f"{OP}: {name} must be (B, N, L) = {(batch, N, L)} or (B, G, N, L) "
                             f"with G dividing D={dim}, got {tuple(X.shape)}")
    if (B.shape[1] if B.dim() == 4 else 1) != (C.shape[1] if C.dim() == 4 else 1):
        raise ValueError(f"{OP}: B and C must have the same number of groups, got "
                         f"{tuple(B.shape)} and {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{OP}: {name} must be ({dim},), got {tuple(t.shape)}")
    if scheme not in ("euler_b", "zoh"):
        raise ValueError(f"{OP}: scheme must be 'euler_b' or 'zoh', got {scheme!r}")
    n_seq = batch
    if cu_seqlens is not None:
        n_seq = check_cu_seqlens(OP, cu_seqlens, batch, L)
    if initial_state is not None and initial_state.shape != (n_seq, dim, N):
        raise ValueError(f"{OP}: initial_state must be {(n_seq, dim, N)} "
                         f"({'(S, D, N) with cu_seqlens' if cu_seqlens is not None else '(B, D, N)'}), "
                         f"got {tuple(initial_state.shape)}")
    same_device(OP, u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                initial_state=initial_state, cu_seqlens=cu_seqlens)
    return n_seq
