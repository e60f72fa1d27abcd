"""Argument validation for ``selective_scan`` (shared by every backend).

Each error names the argument, the expected shape/dtype and what was given, so a caller
can fix the call without reading the kernel. Value checks that need the data (NaN in the
small parameter tensors, the contents of ``cu_seqlens``) are skipped while
``torch.compile`` traces, where they would force a graph break.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hjseq.schemes import OP_SCHEMES

SCHEMES = OP_SCHEMES  # the one list, in hjseq.schemes
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _floating(x: Tensor, name: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"selective_scan: {name} must be a real floating tensor "
                        f"(float32/float64/bfloat16/float16), got dtype {x.dtype}")


def _shape(x: Tensor, name: str, expected: tuple[int, ...], layout: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"selective_scan: {name} must have shape {layout} = {tuple(expected)}, "
                         f"got {tuple(x.shape)}")


def validate(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None = None, z: Tensor | None = None,
             delta_bias: Tensor | None = None, initial_state: Tensor | None = None,
             scheme: str = "euler_b", cu_seqlens: Tensor | None = None) -> None:
    """Raise ``TypeError``/``ValueError`` naming the first bad argument of a selective scan
    call (layouts of ``ref.py``: u, delta, z (B, D, L); A (D, N); B, C (B, N, L) or
    (B, G, N, L) with G dividing D, or time-invariant (D, N); D, delta_bias (D,);
    initial_state (B, D, N), or
    (S, D, N) with ``cu_seqlens`` of S + 1 entries)."""
    u = _tensor(u, "u")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be 3-D (batch, dim, seqlen), got shape "
                         f"{tuple(u.shape)}")
    _floating(u, "u")
    batch, dim, L = u.shape
    _tensor(delta, "delta")
    _shape(delta, "delta", (batch, dim, L), "(B, D, L) like u")
    if delta.dtype != u.dtype:
        raise TypeError(f"selective_scan: delta must have u's dtype {u.dtype}, got {delta.dtype}; "
                        f"cast it with delta.to(u.dtype)")
    _tensor(A, "A")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must have shape (D, N) with D = {dim} (u.shape[1]), "
                         f"got {tuple(A.shape)}")
    _floating(A, "A")
    N = A.shape[1]
    for name, X in (("B", B), ("C", C)):
        _tensor(X, name)
        _floating(X, name)
        if X.dim() == 2:  # time-invariant (S4D-style), one row per channel
            _shape(X, name, (dim, N), "(D, N) (time-invariant)")
        elif X.dim() == 3:
            _shape(X, name, (batch, N, L), "(B, N, L)")
        elif X.dim() == 4:
            G = X.shape[1]
            if G < 1 or dim % G != 0:
                raise ValueError(f"selective_scan: {name} has G = {G} groups (shape[1] of "
                                 f"(B, G, N, L)), which must divide D = {dim}")
            _shape(X, name, (batch, G, N, L), "(B, G, N, L)")
        else:
            raise ValueError(f"selective_scan: {name} must be (B, N, L) = {(batch, N, L)}, "
                             f"(B, G, N, L), or time-invariant (D, N) = {(dim, N)}, got shape "
                             f"{tuple(X.shape)}")
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"selective_scan: B and C must have the same number of groups, got "
                         f"{B.shape[1]} and {C.shape[1]}")
    for name, X in (("D", D), ("delta_bias", delta_bias)):
        if X is not None:
            _tensor(X, name)
            _floating(X, name)
            _shape(X, name, (dim,), "(D,)")
    if z is not None:
        _tensor(z, "z")
        _shape(z, "z", (batch, dim, L), "(B, D, L) like u")
        if z.dtype != u.dtype:
            raise TypeError(f"selective_scan: z must have u's dtype {u.dtype}, got {z.dtype}")
    if scheme not in SCHEMES:
        raise ValueError(f"selective_scan: scheme must be one of {SCHEMES}, got {scheme!r}")
    nseq = batch
    if cu_seqlens is not None:
        _tensor(cu_seqlens, "cu_seqlens")
        if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
            raise ValueError(f"selective_scan: cu_seqlens must be 1-D with S + 1 >= 2 entries "
                             f"(cumulative lengths), got shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"selective_scan: cu_seqlens must be int32 or int64, got "
                            f"{cu_seqlens.dtype}")
        if batch != 1:
            raise ValueError(f"selective_scan: with cu_seqlens the batch must be 1 (sequences "
                             f"packed along L), got u.shape[0] = {batch}")
        nseq = cu_seqlens.shape[0] - 1
    if initial_state is not None:
        _tensor(initial_state, "initial_state")
        _floating(initial_state, "initial_state")
        layout = "(S, D, N) (one per packed sequence)" if cu_seqlens is not None else "(B, D, N)"
        _shape(initial_state, "initial_state", (nseq, dim, N), layout)
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
             "delta_bias": delta_bias, "initial_state": initial_state, "cu_seqlens": cu_seqlens}
    for name, X in named.items():
        if X is not None and X.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {X.device} but u is on {u.device}; "
                             f"move all arguments to one device")
    if torch.compiler.is_compiling():
        return
    for name, X in (("A", A), ("D", D), ("delta_bias", delta_bias)):
        if X is not None and bool(torch.isnan(X).any()):
            raise ValueError(f"selective_scan: {name} contains NaN")
    if cu_seqlens is not None:
        c = cu_seqlens.tolist()
        if c[0] != 0 or c[-1] != L:
            raise ValueError(f"selective_scan: cu_seqlens must start at 0 and end at L = {L}, "
                             f"got {c[0]} ... {c[-1]}")
        if any(b < a for a, b in zip(c, c[1:])):
            raise ValueError("selective_scan: cu_seqlens must be non-decreasing (cumulative "
                             f"sequence lengths), got {c}")
