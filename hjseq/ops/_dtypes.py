"""The accumulation-dtype rule every op and block follows."""
from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs accumulate in float64; every other dtype (fp32, bf16, fp16) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
