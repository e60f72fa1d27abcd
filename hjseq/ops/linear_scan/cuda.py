"""``backend="cuda"``: the hand-written CUDA linear scan in ``csrc/cuda/linear_scan.cu``
(forward and backward; block-wide scan over chunks of 2048 steps, 128 threads x 16 items,
chunk-entry states saved for the backward), built on first use where torch has CUDA, a device is visible and nvcc is
found. a and b are computed in one dtype (the wider of the two: fp32, fp16 or bf16) with
fp32 arithmetic. Declined by :func:`supports`: ``cu_seqlens`` (use ``"triton"``), float64.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .._cuda_common import build, unavailable_reason
from .._registry import BackendUnavailable
from . import _validate  # the dispatcher's argument checks

OP = "linear_scan"
SOURCES = ["cuda/linear_scan.cu", "cuda/linear_scan_binding.cpp"]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def supports(**kw: Any) -> str | None:
    """Reason this call cannot go to the CUDA kernel, or None."""
    if kw.get("cu_seqlens") is not None:
        return "the CUDA kernel has no packed sequences (cu_seqlens); use backend='triton'"
    for name in ("a", "b"):
        t = kw.get(name)
        if t is not None and t.dtype not in DTYPES:
            return f"the CUDA kernel takes float32/float16/bfloat16, got {name} {t.dtype}"
    return None


def _ext():
    return build("linear_scan_cuda", SOURCES)


class _CudaLinearScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):
        dt = torch.promote_types(a.dtype, b.dtype)
        a_, b_ = a.to(dt).contiguous(), b.to(dt).contiguous()
        h0_ = h0.float().contiguous() if h0 is not None else None
        out, hT, states = _ext().forward(a_, b_, h0_)
        ctx.save_for_backward(a_, b_, states)
        ctx.dtypes = (a.dtype, b.dtype, None if h0 is None else h0.dtype)
        return out.to(b.dtype), hT

    @staticmethod
    def backward(ctx, dout, dhT):
        a, b, states = ctx.saved_tensors
        a_dt, b_dt, h0_dt = ctx.dtypes
        dout = dout.to(b.dtype).contiguous() if dout is not None else torch.zeros_like(b)
        dhT = dhT.float().contiguous() if dhT is not None else None
        da, db, dh0 = _ext().backward(a, b, states, dout, dhT)
        return da.to(a_dt), db.to(b_dt), (dh0.to(h0_dt) if h0_dt is not None else None)


def linear_scan_cuda(a: Tensor, b: Tensor, initial_state: Tensor | None = None,
                     return_final_state: bool = False, cu_seqlens: Tensor | None = None):
    """CUDA ``h_t = a_t h_{t-1} + b_t``; a, b (B, D, L), initial_state (B, D). Returns h
    (B, D, L) in b's dtype and, on request, the float32 final state (B, D)."""
    _validate(a, b, initial_state, cu_seqlens)
    reason = supports(a=a, b=b, cu_seqlens=cu_seqlens)
    if reason:
        raise BackendUnavailable(f"{OP} backend 'cuda': {reason}")
    h, hT = _CudaLinearScanFn.apply(a, b, initial_state)
    return (h, hT) if return_final_state else h


def load() -> Callable:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    _ext()  # build now, so that a failure shows here as BackendUnavailable
    return linear_scan_cuda
