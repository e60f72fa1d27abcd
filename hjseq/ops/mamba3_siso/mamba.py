"""``mamba3_siso`` mamba backend: mamba-ssm's own ``mamba3_siso_combined`` (CUDA only; it
computes in bfloat16 whatever the input dtype)."""
from __future__ import annotations

import torch

from .._registry import BackendUnavailable


def load():
    if not torch.cuda.is_available():
        raise BackendUnavailable("mamba-ssm's Mamba-3 kernels need CUDA")
    try:
        from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined
    except ImportError as e:
        raise BackendUnavailable(f"mamba-ssm's mamba3_siso_combined is not importable: {e}")
    return mamba3_siso_combined


def supports(**features) -> str | None:
    Q = features.get("Q")
    if Q is not None and Q.dtype == torch.float64:
        return "mamba-ssm computes in bfloat16; float64 asks for the chunked backends"
    return None
