"""``backend="mamba"``: the ``causal-conv1d`` package's CUDA ``causal_conv1d_fn``, where it
is installed (Mamba's short convolution).

That kernel handles widths 2-4 and fp32/fp16/bf16. It returns final states and reads
packed sequences (``seq_idx``) only from a channel-last x, so those calls copy x to that
layout first; it cannot combine packed sequences with initial or final states, and
:func:`supports` declines those calls (and float64, and other widths).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .._registry import BackendUnavailable


def supports(**kw: Any) -> str | None:
    """Reason this call cannot go to causal-conv1d, or None."""
    x, weight = kw.get("x"), kw.get("weight")
    if weight is not None and weight.dim() == 2 and not 2 <= weight.shape[1] <= 4:
        return f"causal-conv1d supports kernel widths 2..4, got {weight.shape[1]}"
    if x is not None and x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"causal-conv1d supports float32/float16/bfloat16, got {x.dtype}"
    if kw.get("cu_seqlens") is not None and (kw.get("initial_state") is not None
                                             or kw.get("return_final_state")):
        return "causal-conv1d cannot combine packed sequences with initial/final states"
    return None


def _channel_last(x: Tensor) -> Tensor:
    """Same (B, D, L) values with the D axis contiguous (stride 1)."""
    return x if x.stride(1) == 1 else x.transpose(1, 2).contiguous().transpose(1, 2)


def load() -> Callable:
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as e:  # ImportError, or a CUDA extension that fails to load
        raise BackendUnavailable(f"causal_conv1d is not importable ({type(e).__name__}: {e}); "
                                 f"`pip install causal-conv1d` on a CUDA machine") from e

    def causal_conv1d_mamba(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                            activation: str | None = None, initial_state: Tensor | None = None,
                            return_final_state: bool = False,
                            cu_seqlens: Tensor | None = None):
        """hjseq's causal_conv1d signature on top of causal-conv1d's ``causal_conv1d_fn``."""
        reason = supports(x=x, weight=weight, initial_state=initial_state,
                          return_final_state=return_final_state, cu_seqlens=cu_seqlens)
        if reason:
            raise BackendUnavailable(f"causal_conv1d backend 'mamba': {reason}")
        seq_idx = None
        if cu_seqlens is not None:
            lens = cu_seqlens[1:] - cu_seqlens[:-1]
            idx = torch.arange(lens.numel(), device=x.device, dtype=torch.int32)
            seq_idx = torch.repeat_interleave(idx, lens, output_size=x.shape[-1])[None]
        if seq_idx is not None or return_final_state:
            x = _channel_last(x)
        w = weight.to(x.dtype)
        b = bias.to(x.dtype) if bias is not None else None
        h0 = initial_state.to(x.dtype) if initial_state is not None else None
        return causal_conv1d_fn(x, w, b, seq_idx=seq_idx, initial_states=h0,
                                return_final_states=return_final_state, activation=activation)

    return causal_conv1d_mamba
