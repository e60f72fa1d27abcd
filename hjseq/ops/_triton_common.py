"""Shared machinery of the Triton backends (``hjseq/ops/<op>/triton.py``).

Triton kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, read by ``triton.jit`` when a kernel module is imported: set it
before the first import of a ``triton.py`` backend). :func:`unavailable_reason` says why a
Triton backend cannot run here, for its ``load()``.

The scans are written with ``tl.associative_scan`` over the first-order linear recurrence
``h_t = a_t h_{t-1} + b_t``, whose pairs ``(a, b)`` compose with :func:`scan_combine`.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    from triton import knobs as _knobs

    _IMPORT_ERROR: str | None = None
except ImportError as e:  # triton is optional; the backend then reports why it is off
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _knobs = None
    _IMPORT_ERROR = f"triton is not importable ({e}); `pip install triton` to enable it"


def interpreting() -> bool:
    """True when ``triton.jit`` builds interpreted kernels (``TRITON_INTERPRET=1``)."""
    return _knobs is not None and bool(_knobs.runtime.interpret)


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
else:  # pragma: no cover - only without triton
    scan_combine = None
