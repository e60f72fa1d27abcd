"""``HJGRU``: the GRU as gated Euler on ``ḣ = n(h) − h`` with the data-dependent,
per-coordinate step ``Δ(1 − s)``:

    r = σ(W_ir x + b_ir + W_hr h + b_hr),   s = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
    h_k = h_{k−1} + Δ(1 − s) ⊙ (n − h_{k−1})  [+ √(2εΔ) ξ_k]

(s is torch's z.) At Δ = 1, ε = 0 this is exactly ``torch.nn.GRU``. ε > 0 adds
√(2εΔ)ξ_k to h after each step in training mode only; eval mode is deterministic.
State: h (B, H). Output: h_k for every token, (B, L, H).
"""
from __future__ import annotations

from torch import nn

from ..hamiltonians import GRU
from ..spec import GateStep, HJSpec
from .base import TorchCell


class HJGRU(TorchCell):
    """``HJGRU(input_size, hidden_size, bias=True, dt=1.0, eps=0.0, backend="auto",
    check_finite=False)``; parameters ``weight_ih`` (3H, I), ``weight_hh`` (3H, H),
    ``bias_ih``/``bias_hh`` (3H,) in torch's gate order (r, z, n). x (B, L, I) -> (B, L, H)."""

    GATES, CELL, TORCH = 3, "gru", nn.GRU
    state_names = ("h",)

    def _make_spec(self, dt: float, eps: float) -> HJSpec:
        ham = GRU()
        return HJSpec(ham, viscosity=eps, step=GateStep(ham.update_gate, dt),
                      scheme="gated_euler")

