"""Executable definition of the SSD scan (Mamba-2's matrix-state recurrence), sequential.

Per batch b and head i (reading B, C of group i // (h // g)), with a (p, n) state S:

    S_t = exp(log_decay_t) · S_{t−1} + x_t ⊗ B_t,      y_t = S_t · C_t   (contract n)

x (b, l, h, p) is the per-token input already scaled by its step; log_decay (b, l, h) is
real (−inf means a full reset: S_t = x_t ⊗ B_t); B, C (b, l, g, n); initial_states
(b, h, p, n), zeros if None. Computed in float32 (float64 for float64 inputs); y has x's
dtype, the final state (b, h, p, n) the accumulation dtype.

Variable length: with ``cu_seqlens`` (s+1,) the batch is 1, the l axis packs s sequences,
the state restarts at each sequence start, initial_states and final states are (s, h, p, n).
The chunked backends compute the same numbers by blocks (``chunk_size`` only changes
round-off); this loop is what they are tested against.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hjseq.ops._dtypes import accumulation_dtype


def expand_groups(X: Tensor, heads: int) -> Tensor:
    """(b, l, g, n) -> (b, l, h, n): head i reads group i // (h // g)."""
    return X.repeat_interleave(heads // X.shape[2], dim=2)


def ssd_scan_ref(x: Tensor, log_decay: Tensor, B: Tensor, C: Tensor,
                 initial_states: Tensor | None = None, cu_seqlens: Tensor | None = None,
                 return_final_states: bool = False, chunk_size: int = 64):
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        ys, finals = [], []
        for s in range(len(bounds) - 1):
            lo, hi = bounds[s], bounds[s + 1]
            y, f = ssd_scan_ref(x[:, lo:hi], log_decay[:, lo:hi], B[:, lo:hi], C[:, lo:hi],
                                None if initial_states is None else initial_states[s:s + 1],
                                None, True)
            ys.append(y)
            finals.append(f)
        y, f = torch.cat(ys, dim=1), torch.cat(finals, dim=0)
        return (y, f) if return_final_states else y
    acc = accumulation_dtype(x.dtype)
    batch, L, heads, p = x.shape
    n = B.shape[-1]
    x_, a_ = x.to(acc), torch.exp(log_decay.to(acc))
    B_, C_ = expand_groups(B.to(acc), heads), expand_groups(C.to(acc), heads)
    S = (initial_states.to(acc) if initial_states is not None
         else x_.new_zeros(batch, heads, p, n))
    ys = []
    for t in range(L):
        S = a_[:, t, :, None, None] * S + x_[:, t, :, :, None] * B_[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, C_[:, t]))
    y = torch.stack(ys, dim=1) if L else x_.new_zeros(x.shape)
    y = y.to(x.dtype)
    return (y, S) if return_final_states else y


def load():
    return ssd_scan_ref
