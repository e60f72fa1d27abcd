"""Shared machinery of the Triton backends (``hjseq/ops/<op>/triton.py``).

Triton kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, read by ``triton.jit`` when a kernel module is imported: set it
before the first import of a ``triton.py`` backend). :func:`unavailable_reason` says why a
Triton backend cannot run here, for its ``load()``.

The scans are written with ``tl.associative_scan`` over the first-order linear recurrence
``h_t = a_t h_{t-1} + b_t``, whose pairs ``(a, b)`` compose with :func:`scan_combine`.
Only forward scans are used: a reverse (adjoint) scan loads its tile in reversed time order,
scans forward and turns the result around with :func:`flip_time` (Triton's GPU lowering of
``reverse=True`` scans with non-commutative combines has had wrong-result reports).

Offsets are computed in 64 bits (index vectors are cast with ``.to(tl.int64)`` before they
meet a stride), so tensors with more than 2³¹ elements, or strided views reaching that far,
are addressed correctly.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except ImportError as e:  # triton is optional; the backend then reports why it is off
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"triton is not importable ({e}); `pip install triton` to enable it"

try:  # triton >= 3.4 holds its settings in `knobs`; older releases read the environment
    from triton import knobs as _knobs
except ImportError:
    _knobs = None


def interpreting() -> bool:
    """True when ``triton.jit`` builds interpreted kernels (``TRITON_INTERPRET=1``)."""
    if triton is None:
        return False
    if _knobs is not None:
        return bool(_knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def unavailable_reason() -> str | None:
    """Why Triton kernels cannot run in this process, or None if they can."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not torch.cuda.is_available() and not interpreting():
        return ("no CUDA device and TRITON_INTERPRET is not set; set TRITON_INTERPRET=1 before "
                "importing hjseq's Triton kernels to run them on the CPU (slowly)")
    return None


def tl_dtype(dtype: torch.dtype):
    """The ``tl`` dtype for an accumulation dtype (passed to kernels as a constexpr)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def tile_offsets(cu_seqlens: torch.Tensor | None, batch: int, length: int, tile: int,
                 device: torch.device) -> tuple[torch.Tensor, int]:
    """Start slot of each sequence in a buffer that holds one entry per tile of ``tile``
    steps, and the total number of slots (an upper bound for packed sequences, so no host
    synchronisation is needed). Returns ``(offsets (S,) int64, n_slots)``."""
    if cu_seqlens is None:
        per = max(1, -(-length // tile))
        return torch.arange(batch, device=device, dtype=torch.int64) * per, batch * per
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    n_tiles = torch.clamp((lens + tile - 1) // tile, min=1)
    offsets = torch.cumsum(n_tiles, 0) - n_tiles
    n_seq = cu_seqlens.numel() - 1
    return offsets.to(device), -(-length // tile) + n_seq


def pick_tile(length: int, cap: int = 64, floor: int = 16) -> int:
    """A power-of-two time tile: ``cap`` for long sequences, smaller for short ones."""
    return max(floor, min(cap, triton.next_power_of_2(max(length, 1))))


if triton is not None:

    @triton.jit
    def scan_combine(a1, b1, a2, b2):
        """Compose two steps of ``h ↦ a h + b``: first (a1, b1), then (a2, b2)."""
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def flip_time(x, AXIS: tl.constexpr, LOG2_T: tl.constexpr, IDT: tl.constexpr):
        """``x`` reversed along axis ``AXIS`` (of length ``2**LOG2_T``), bit-exactly: the
        axis is split into LOG2_T axes of length 2 and each pair (e, e') swapped as
        ``(e + e') - e`` on the integer bit patterns (``IDT``: the integer type of x's
        width), which wrap-around arithmetic makes exact for every pattern, NaNs included."""
        y = tl.reshape(x.to(IDT, bitcast=True),
                       x.shape[:AXIS] + [2] * LOG2_T + x.shape[AXIS + 1:])
        for i in tl.static_range(LOG2_T):
            y = tl.sum(y, AXIS + i, keep_dims=True) - y
        return tl.reshape(y, x.shape).to(x.dtype, bitcast=True)

else:  # pragma: no cover - only without triton
    scan_combine = flip_time = None


def int_dtype(dtype: torch.dtype):
    """The ``tl`` integer type as wide as an accumulation dtype (for :func:`flip_time`)."""
    return tl.int64 if dtype == torch.float64 else tl.int32


def log2_exact(n: int) -> int:
    """log2 of a power of two (the constexpr LOG2_T of :func:`flip_time`)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"log2_exact: {n} is not a power of two")
    return n.bit_length() - 1
