"""``recurrent_scan`` via torch's own fused RNN kernels (``torch.rnn_tanh`` / ``torch.gru`` /
``torch.lstm``). Exact only at Δ = 1 without noise; ``supports`` declines anything else."""
from __future__ import annotations

import torch
from torch import Tensor


def supports(cell: str, dt: float = 1.0, noise: Tensor | None = None, **_) -> str | None:
    if not isinstance(dt, (int, float)):  # e.g. symbolic while torch.compile traces
        return f"dt={dt!r} is not a known number, and only dt = 1 is torch's kernels"
    if float(dt) != 1.0:
        return f"torch's fused RNN kernels are the Δ = 1 case only (dt={dt})"
    if noise is not None:
        return "torch's fused RNN kernels take no per-step noise"
    return None


def recurrent_scan_native(cell: str, x: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                          bias_ih: Tensor | None, bias_hh: Tensor | None, h0: Tensor | None,
                          c0: Tensor | None = None, dt: float = 1.0,
                          noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    reason = supports(cell, dt, noise)
    if reason:
        raise ValueError(f"recurrent_scan backend 'native': {reason}")
    Bsz, H = x.shape[0], weight_hh.shape[1]
    if h0 is None:
        h0 = x.new_zeros(Bsz, H)
    has_bias = bias_ih is not None or bias_hh is not None
    params = [weight_ih, weight_hh]
    if has_bias:  # torch needs both biases or neither
        zeros = weight_ih.new_zeros(weight_ih.shape[0])
        params += [bias_ih if bias_ih is not None else zeros,
                   bias_hh if bias_hh is not None else zeros]
    hx = h0.unsqueeze(0)
    # positional args: has_biases, num_layers, dropout, train, bidirectional, batch_first
    if cell == "lstm":
        c = c0 if c0 is not None else x.new_zeros(Bsz, H)
        out, h_T, c_T = torch.lstm(x, (hx, c.unsqueeze(0)), params, has_bias, 1, 0.0,
                                   torch.is_grad_enabled(), False, True)
        return out, h_T[0], c_T[0]
    fn = torch.rnn_tanh if cell == "rnn_tanh" else torch.gru
    out, h_T = fn(x, hx, params, has_bias, 1, 0.0, torch.is_grad_enabled(), False, True)
    return out, h_T[0], None


def load():
    return recurrent_scan_native
