"""Executable definition of the first-order linear recurrence (gated Euler core).

    h_t = a_t ⊙ h_{t-1} + b_t,    h_{-1} = initial_state (zeros if None)

a, b: (B, D, L); initial_state: (B, D). Returns h: (B, D, L) in b's dtype (accumulated in
float32, float64 for float64 inputs) and, on request, the final state (B, D) in the
accumulation dtype. With ``cu_seqlens`` (S+1,) the batch is 1, the L axis packs S
sequences, the state restarts at each start, initial_state and final state are (S, D).
"""
from __future__ import annotations

import torch
from torch import Tensor
from hjseq.ops._dtypes import accumulation_dtype


def linear_scan_ref(a: Tensor, b: Tensor, initial_state: Tensor | None = None,
                    return_final_state: bool = False, cu_seqlens: Tensor | None = None):
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        hs, finals = [], []
        for s in range(len(bounds) - 1):
            lo, hi = bounds[s], bounds[s + 1]
            h, f = linear_scan_ref(a[..., lo:hi], b[..., lo:hi],
                                   None if initial_state is None else initial_state[s:s + 1], True)
            hs.append(h)
            finals.append(f)
        h, f = torch.cat(hs, dim=-1), torch.cat(finals, dim=0)
        return (h, f) if return_final_state else h
    acc = accumulation_dtype(b.dtype)
    a_, b_ = a.to(acc), b.to(acc)
    h = (initial_state.to(acc) if initial_state is not None
         else b_.new_zeros(b.shape[0], b.shape[1]))
    out = []
    for t in range(b.shape[-1]):
        h = a_[..., t] * h + b_[..., t]
        out.append(h)
    hs = torch.stack(out, dim=-1) if out else b_.new_zeros(b.shape)
    hs = hs.to(b.dtype)
    return (hs, h) if return_final_state else hs


def load():
    return linear_scan_ref
