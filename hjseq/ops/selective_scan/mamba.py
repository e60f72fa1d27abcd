"""``backend="mamba"``: mamba-ssm's fused CUDA ``selective_scan_fn``, where it is installed.

Same layouts as hjseq's op (mamba-ssm defined them). mamba-ssm implements Mamba's own
discretization only, has no initial state and no packed sequences, and computes in
float32 from fp32/fp16/bf16 inputs, so :func:`supports` declines ``scheme="zoh"``,
``initial_state``, ``cu_seqlens`` and float64 (``"auto"`` then moves on; naming the
backend explicitly raises with that reason).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .._registry import BackendUnavailable


def supports(**kw: Any) -> str | None:
    """Reason this call cannot go to mamba-ssm, or None."""
    if kw.get("scheme", "euler_b") != "euler_b":
        return "mamba-ssm implements scheme='euler_b' only"
    if kw.get("cu_seqlens") is not None:
        return "mamba-ssm's selective_scan_fn has no cu_seqlens (packed sequences)"
    if kw.get("initial_state") is not None:
        return "mamba-ssm's selective_scan_fn takes no initial_state"
    u = kw.get("u")
    if u is not None and u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"mamba-ssm supports float32/float16/bfloat16 inputs, got {u.dtype}"
    return None


def load() -> Callable:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # ImportError, or a CUDA extension that fails to load
        raise BackendUnavailable(f"mamba_ssm is not importable ({type(e).__name__}: {e}); "
                                 f"`pip install mamba-ssm` on a CUDA machine") from e

    def selective_scan_mamba(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             D: Tensor | None = None, z: Tensor | None = None,
                             delta_bias: Tensor | None = None, delta_softplus: bool = False,
                             initial_state: Tensor | None = None,
                             return_final_state: bool = False, scheme: str = "euler_b",
                             cu_seqlens: Tensor | None = None):
        """hjseq's selective_scan signature on top of mamba-ssm's ``selective_scan_fn``."""
        reason = supports(u=u, scheme=scheme, cu_seqlens=cu_seqlens,
                          initial_state=initial_state)
        if reason:
            raise BackendUnavailable(f"selective_scan backend 'mamba': {reason}")
        return selective_scan_fn(u, delta, A.float(), B, C,
                                 D=None if D is None else D.float(), z=z,
                                 delta_bias=None if delta_bias is None else delta_bias.float(),
                                 delta_softplus=delta_softplus,
                                 return_last_state=return_final_state)

    return selective_scan_mamba
