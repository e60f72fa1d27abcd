"""Executable definition of the fused nonlinear recurrences (HJRNN / HJGRU / HJLSTM).

Each cell is one explicit Euler step of size Δ = ``dt`` of a characteristic ODE;
at Δ = 1 the update is exactly ``torch.nn.RNN`` (tanh) / ``GRU`` / ``LSTM``.
With ``gi = W_ih x_t + b_ih`` and ``gh = W_hh h + b_hh`` (torch gate order: LSTM i,f,g,o;
GRU r,z,n):

- ``rnn_tanh``: ``h ← h + Δ(−h + tanh(gi + gh))``
- ``gru``:      ``r, s = σ(gi_r + gh_r), σ(gi_z + gh_z)``; ``n = tanh(gi_n + r⊙gh_n)``;
                ``h ← h + Δ(1−s)⊙(n − h)``
- ``lstm``:     ``i, f, o = σ(·)``, ``g = tanh(·)``; ``c ← c + Δ(−(1−f)⊙c + i⊙g)``;
                ``h ← o⊙tanh(c)``

``noise`` (B, L, H), already scaled (e.g. √(2εΔ)·ξ), is added after the step: to h for
rnn_tanh/gru, to c for lstm (before ``h = o⊙tanh(c)``, so h sees the noisy cell).

Shapes: x (B, L, I) batch-first; weight_ih (G·H, I), weight_hh (G·H, H) with G = 1, 3, 4
for rnn_tanh, gru, lstm; bias_ih, bias_hh (G·H,) or None; h0, c0 (B, H) or None (zeros).
Returns ``(out (B, L, H), h_T (B, H), c_T (B, H) or None)`` in x's dtype. Half-precision
inputs are computed in float32.
"""
from __future__ import annotations

import torch
from torch import Tensor
from hjseq.ops._dtypes import accumulation_dtype

CELLS = {"rnn_tanh": 1, "gru": 3, "lstm": 4}


def recurrent_scan_ref(cell: str, x: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                       bias_ih: Tensor | None, bias_hh: Tensor | None, h0: Tensor | None,
                       c0: Tensor | None = None, dt: float = 1.0,
                       noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Plain time loop of the update rules in the module docstring (the definition)."""
    dtype = x.dtype
    acc = accumulation_dtype(dtype)
    Bsz, L, _ = x.shape
    H = weight_hh.shape[1]

    def up(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(acc)

    x, w_ih, w_hh, b_ih, b_hh = up(x), up(weight_ih), up(weight_hh), up(bias_ih), up(bias_hh)
    noise = up(noise)
    h = up(h0) if h0 is not None else x.new_zeros(Bsz, H)
    c = None
    if cell == "lstm":
        c = up(c0) if c0 is not None else x.new_zeros(Bsz, H)
    gi_all = x @ w_ih.T
    if b_ih is not None:
        gi_all = gi_all + b_ih
    out = []
    for t in range(L):
        gi = gi_all[:, t]
        gh = h @ w_hh.T
        if b_hh is not None:
            gh = gh + b_hh
        if cell == "rnn_tanh":
            h = h + dt * (-h + torch.tanh(gi + gh))
        elif cell == "gru":
            gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
            gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(gi_r + gh_r)
            s = torch.sigmoid(gi_z + gh_z)
            n = torch.tanh(gi_n + r * gh_n)
            h = h + dt * (1 - s) * (n - h)
        elif cell == "lstm":
            gates = gi + gh
            i, f, g, o = gates.chunk(4, dim=-1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = c + dt * (-(1 - f) * c + i * g)
            if noise is not None:
                c = c + noise[:, t]
            h = o * torch.tanh(c)
        else:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {cell!r}")
        if noise is not None and cell != "lstm":
            h = h + noise[:, t]
        out.append(h)
    out_t = torch.stack(out, dim=1) if out else x.new_zeros(Bsz, 0, H)
    return (out_t.to(dtype), h.to(dtype), None if c is None else c.to(dtype))


def load():
    return recurrent_scan_ref
