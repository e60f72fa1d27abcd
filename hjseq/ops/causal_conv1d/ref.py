"""Executable definition of the depthwise causal 1-D convolution (Mamba's short conv).

    y[b, d, t] = act( bias[d] + Σ_{k=0}^{W-1} weight[d, k] · x̃[b, d, t − (W−1) + k] )

where x̃ is x preceded by ``initial_state`` (B, D, W−1) (zeros if None). act is None or
"silu"/"swish". x: (B, D, L); weight: (D, W); bias: (D,). The final state is the last W−1
entries of x̃ (B, D, W−1), what ``step`` decoding needs. With ``cu_seqlens`` (S+1,) the
batch is 1 and the L axis packs S sequences, each with its own (zero or given) history.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from hjseq.ops._dtypes import accumulation_dtype


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                      activation: str | None = None, initial_state: Tensor | None = None,
                      return_final_state: bool = False, cu_seqlens: Tensor | None = None):
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        ys, finals = [], []
        for s in range(len(bounds) - 1):
            lo, hi = bounds[s], bounds[s + 1]
            y, f = causal_conv1d_ref(x[..., lo:hi], weight, bias, activation,
                                     None if initial_state is None else initial_state[s:s + 1],
                                     True)
            ys.append(y)
            finals.append(f)
        y, f = torch.cat(ys, dim=-1), torch.cat(finals, dim=0)
        return (y, f) if return_final_state else y
    dtype_in = x.dtype
    acc = accumulation_dtype(dtype_in)
    batch, dim, L = x.shape
    W = weight.shape[-1]
    hist = (initial_state.to(acc) if initial_state is not None
            else x.new_zeros(batch, dim, W - 1, dtype=acc))
    xt = torch.cat([hist, x.to(acc)], dim=-1)  # (B, D, W-1+L)
    if L == 0:  # nothing to convolve; the history passes through unchanged
        y = xt.new_zeros(batch, dim, 0)
    else:
        y = F.conv1d(xt, weight.to(acc).unsqueeze(1),
                     None if bias is None else bias.to(acc), groups=dim)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    final = xt[..., xt.shape[-1] - (W - 1):]
    y = y.to(dtype_in)
    return (y, final.to(dtype_in)) if return_final_state else y


def load():
    return causal_conv1d_ref
