"""``linear_scan`` CPU backend: C++ forward and backward (csrc/cpu/linear_scan.cpp), exposed
as ``torch.library`` custom ops with fake kernels and autograd, so ``torch.compile(
fullgraph=True)`` traces through it. Same signature and semantics as ref.py."""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from .._build import load_extension
from hjseq.ops._dtypes import accumulation_dtype



def _ext() -> ModuleType:
    return load_extension("linear_scan", ["cpu/linear_scan.cpp"])  # built once, then cached by name



@torch.library.custom_op("hjseq::linear_scan_fwd", mutates_args=(), device_types="cpu")
def _fwd(a: Tensor, b: Tensor, h0: Tensor | None, cu: Tensor) -> tuple[Tensor, Tensor]:
    h, hT = _ext().forward(a, b, h0, cu)
    return h, hT


@_fwd.register_fake
def _(a, b, h0, cu):
    S = cu.shape[0] - 1
    return torch.empty_like(b), b.new_empty(S, b.shape[0] * b.shape[1],
                                            dtype=accumulation_dtype(b.dtype))


@torch.library.custom_op("hjseq::linear_scan_bwd", mutates_args=(), device_types="cpu")
def _bwd(a: Tensor, h: Tensor, g: Tensor, gT: Tensor, h0: Tensor | None,
         cu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    da, db, dh0 = _ext().backward(a, h, g, gT, h0, cu)
    return da, db, dh0


@_bwd.register_fake
def _(a, h, g, gT, h0, cu):
    return torch.empty_like(a), torch.empty_like(a), torch.empty_like(gT)


def _setup(ctx, inputs, output) -> None:
    a, _, h0, cu = inputs
    h, _ = output
    ctx.has_h0 = h0 is not None
    ctx.save_for_backward(a, h, h0, cu)


def _backward(ctx, g: Tensor, gT: Tensor):
    a, h, h0, cu = ctx.saved_tensors
    da, db, dh0 = _bwd(a, h, g, gT, h0, cu)
    return da, db, (dh0 if ctx.has_h0 else None), None


_fwd.register_autograd(_backward, setup_context=_setup)


def linear_scan_cpu(a: Tensor, b: Tensor, initial_state: Tensor | None = None,
                    return_final_state: bool = False, cu_seqlens: Tensor | None = None):
    """``h_t = a_t ⊙ h_{t−1} + b_t``; a, b (B, D, L) → h (B, D, L) [, final (B, D) or (S, D)]."""
    Bsz, D, L = b.shape
    if cu_seqlens is None:
        cu = torch.tensor([0, L], dtype=torch.int64)
        S = 1
    else:
        cu = cu_seqlens.to(torch.int64)
        S = cu.shape[0] - 1
    acc = accumulation_dtype(b.dtype)
    h0 = None if initial_state is None else initial_state.to(acc).reshape(S, Bsz * D)
    h, hT = _fwd(a, b, h0, cu)
    if not return_final_state:
        return h
    return h, (hT.reshape(Bsz, D) if cu_seqlens is None else hT)


def load():
    _ext()
    return linear_scan_cpu
