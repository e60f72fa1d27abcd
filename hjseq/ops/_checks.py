"""Input validation shared by the ops' dispatchers: every error names the op, the argument,
what was expected and what was given, so the fix is obvious."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_tensor(op: str, name: str, t: object, shape: Sequence[int | None] | None = None,
                 dims: str = "", dtype: torch.dtype | None = None,
                 device: torch.device | None = None) -> Tensor:
    """Check that ``t`` is a floating tensor of ``shape`` (``None`` entries are free),
    ``dtype`` and ``device``; ``dims`` names the axes for the message, e.g. ``"(B, D, L)"``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32/float64/bfloat16/float16, got {t.dtype}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape))
        if not ok:
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{op}: {name} must have shape {dims or ''}{' = ' if dims else ''}"
                             f"{want}, got {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but the other inputs are {dtype}; "
                        f"cast it with .to({dtype})")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the other inputs are on {device}; "
                         f"move it with .to({str(device)!r})")
    return t


def check_cu_seqlens(op: str, cu_seqlens: object, batch: int, length: int) -> int:
    """Check packed-sequence offsets ``cu_seqlens`` (S+1,) int: 0 = c_0 ≤ … ≤ c_S = L, batch 1.
    Returns S, the number of sequences."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: cu_seqlens must be an int32/int64 tensor of sequence offsets "
                        f"(S+1,), got {getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{op}: cu_seqlens must be 1-D with S+1 >= 2 entries, got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"{op}: with cu_seqlens the sequences are packed along L, so the batch "
                         f"size must be 1, got {batch}")
    if torch.compiler.is_compiling():  # values are data: checked eagerly only
        return cu_seqlens.shape[0] - 1
    c = cu_seqlens.tolist()
    if c[0] != 0 or c[-1] != length or any(b < a for a, b in zip(c, c[1:])):
        raise ValueError(f"{op}: cu_seqlens must rise from 0 to L={length} (non-decreasing), "
                         f"got {c}")
    return len(c) - 1


def check_scalar(op: str, name: str, v: object, positive: bool = False) -> float:
    """A finite real number (``> 0`` when ``positive``)."""
    if torch.compiler.is_compiling():  # checked eagerly; float() specializes a symbolic value
        return float(v)  # type: ignore[arg-type]
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be a real number, got {type(v).__name__}") from None
    if not math.isfinite(f) or (positive and f <= 0):
        raise ValueError(f"{op}: {name} must be a finite{' positive' if positive else ''} "
                         f"number, got {v}")
    return f
