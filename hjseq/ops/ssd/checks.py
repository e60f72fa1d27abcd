"""Argument validation for ``ssd_scan`` and ``ssd`` (shared by every backend).

Every error names the op, the argument, the expected layout and what was given. Value
checks that need the data (NaN in the small per-token/per-head tensors, ``cu_seqlens``
contents) are skipped while ``torch.compile`` traces.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hjseq.schemes import OP_SCHEMES

from .._checks import check_cu_seqlens, check_tensor

#: step rules of ``ssd`` (the same names as selective_scan's)
SCHEMES = OP_SCHEMES  # the one list, in hjseq.schemes


def check_chunk_size(op: str, chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int (e.g. 64 or 128), "
                         f"got {chunk_size!r}")
    return chunk_size


def _groups(op: str, B: Tensor, C: Tensor, batch: int, L: int, heads: int,
            device: torch.device) -> None:
    check_tensor(op, "B", B, (batch, L, None, None), "(b, l, g, n)", device=device)
    g, n = B.shape[2], B.shape[3]
    if g < 1 or heads % g != 0:
        raise ValueError(f"{op}: B has g = {g} groups (shape[2] of (b, l, g, n)), which must "
                         f"divide the number of heads h = {heads}")
    check_tensor(op, "C", C, (batch, L, g, n), "(b, l, g, n) like B", device=device)


def _states(op: str, initial_states: Tensor | None, nseq: int, heads: int, p: int, n: int,
            varlen: bool, device: torch.device) -> None:
    if initial_states is not None:
        check_tensor(op, "initial_states", initial_states, (nseq, heads, p, n),
                     "(s, h, p, n) (one per packed sequence)" if varlen else "(b, h, p, n)",
                     device=device)


def _no_nan(op: str, named: dict[str, Tensor | None], finite: bool = False) -> None:
    if torch.compiler.is_compiling():
        return
    for name, X in named.items():
        if X is None:
            continue
        if bool(torch.isnan(X).any()):
            raise ValueError(f"{op}: {name} contains NaN")
        if finite and bool(torch.isinf(X).any()):
            raise ValueError(f"{op}: {name} contains ±inf")


def validate_scan(x: Tensor, log_decay: Tensor, B: Tensor, C: Tensor,
                  initial_states: Tensor | None, cu_seqlens: Tensor | None,
                  chunk_size: int) -> None:
    """Layouts of ``ssd_scan``: x (b, l, h, p); log_decay (b, l, h) (−inf allowed, +inf and
    NaN not); B, C (b, l, g, n) with g | h; initial_states (b, h, p, n) or (s, h, p, n) with
    ``cu_seqlens`` (s+1,)."""
    op = "ssd_scan"
    check_tensor(op, "x", x, (None, None, None, None), "(b, l, h, p)")
    batch, L, heads, p = x.shape
    check_tensor(op, "log_decay", log_decay, (batch, L, heads), "(b, l, h) like x[..., 0]",
                 device=x.device)
    _groups(op, B, C, batch, L, heads, x.device)
    nseq = batch
    if cu_seqlens is not None:
        nseq = check_cu_seqlens(op, cu_seqlens, batch, L)
        if cu_seqlens.device != x.device:
            raise ValueError(f"{op}: cu_seqlens is on {cu_seqlens.device} but x is on "
                             f"{x.device}; move it with .to({str(x.device)!r})")
    _states(op, initial_states, nseq, heads, p, B.shape[3], cu_seqlens is not None, x.device)
    check_chunk_size(op, chunk_size)
    if not torch.compiler.is_compiling():
        if bool(torch.isnan(log_decay).any()):
            raise ValueError(f"{op}: log_decay contains NaN")
        if bool((log_decay == float("inf")).any()):
            raise ValueError(f"{op}: log_decay contains +inf (only −inf, a full reset, is "
                             f"allowed)")


def validate_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                 D: Tensor | None, z: Tensor | None, dt_bias: Tensor | None,
                 initial_states: Tensor | None, seq_idx: Tensor | None,
                 cu_seqlens: Tensor | None, dt_limit: tuple[float, float],
                 scheme: str) -> None:
    """Layouts of ``ssd`` (mamba-ssm's ``mamba_chunk_scan_combined``): x, z (b, l, h, p);
    dt (b, l, h); A, dt_bias (h,); B, C (b, l, g, n); D (h,) or (h, p); initial_states
    (b, h, p, n) or (s, h, p, n) with ``cu_seqlens``; seq_idx (b, l) int."""
    op = "ssd"
    check_tensor(op, "x", x, (None, None, None, None), "(b, l, h, p)")
    batch, L, heads, p = x.shape
    dev = x.device
    check_tensor(op, "dt", dt, (batch, L, heads), "(b, l, h)", device=dev)
    check_tensor(op, "A", A, (heads,), "(h,)", device=dev)
    _groups(op, B, C, batch, L, heads, dev)
    if D is not None:
        check_tensor(op, "D", D, None, device=dev)
        if tuple(D.shape) not in ((heads,), (heads, p)):
            raise ValueError(f"{op}: D must have shape (h,) = {(heads,)} or (h, p) = "
                             f"{(heads, p)}, got {tuple(D.shape)}")
    if z is not None:
        check_tensor(op, "z", z, (batch, L, heads, p), "(b, l, h, p) like x", device=dev)
    if dt_bias is not None:
        check_tensor(op, "dt_bias", dt_bias, (heads,), "(h,)", device=dev)
    if seq_idx is not None and cu_seqlens is not None:
        raise ValueError(f"{op}: pass seq_idx or cu_seqlens, not both (cu_seqlens packs "
                         f"sequences with their own states; seq_idx only resets the state)")
    if seq_idx is not None:
        if not isinstance(seq_idx, Tensor) or seq_idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{op}: seq_idx must be an int32/int64 tensor (b, l), got "
                            f"{getattr(seq_idx, 'dtype', type(seq_idx).__name__)}")
        if tuple(seq_idx.shape) != (batch, L):
            raise ValueError(f"{op}: seq_idx must have shape (b, l) = {(batch, L)}, got "
                             f"{tuple(seq_idx.shape)}")
        if seq_idx.device != dev:
            raise ValueError(f"{op}: seq_idx is on {seq_idx.device} but x is on {dev}")
    nseq = batch
    if cu_seqlens is not None:
        nseq = check_cu_seqlens(op, cu_seqlens, batch, L)
    _states(op, initial_states, nseq, heads, p, B.shape[3], cu_seqlens is not None, dev)
    check_chunk_size(op, chunk_size)
    if scheme not in SCHEMES:
        raise ValueError(f"{op}: scheme must be one of {SCHEMES}, got {scheme!r}")
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: dt_limit must be a pair (min, max) of numbers, got "
                        f"{dt_limit!r}") from None
    if not lo <= hi:
        raise ValueError(f"{op}: dt_limit must satisfy min <= max, got {dt_limit!r}")
    _no_nan(op, {"A": A, "D": D, "dt_bias": dt_bias}, finite=True)
    _no_nan(op, {"dt": dt})
