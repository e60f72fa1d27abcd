"""``HJRNN``: the Elman (tanh) RNN as forward Euler on ``ḣ = −h + tanh(W_ih x + b_ih + W_hh h + b_hh)``.

    h_k = h_{k−1} + Δ(−h_{k−1} + tanh(W_ih x_k + b_ih + W_hh h_{k−1} + b_hh))  [+ √(2εΔ) ξ_k]

At Δ = 1, ε = 0 this is exactly ``torch.nn.RNN(nonlinearity="tanh")``; Δ < 1 is the leaky /
continuous-time RNN. ε > 0 adds the stochastic-characteristics noise √(2εΔ)ξ_k (ξ_k standard
normal) to h after each step, in training mode only; eval mode is deterministic.
State: h (B, H). Output: h_k for every token, (B, L, H).
"""
from __future__ import annotations

from torch import nn

from ..hamiltonians import ElmanRNN
from ..spec import ConstantStep, HJSpec
from .base import TorchCell


class HJRNN(TorchCell):
    """``HJRNN(input_size, hidden_size, bias=True, dt=1.0, eps=0.0, backend="auto",
    check_finite=False)``; parameters ``weight_ih`` (H, I), ``weight_hh`` (H, H),
    ``bias_ih``/``bias_hh`` (H,) as torch's ``*_l0``. x (B, L, I) -> (B, L, H)."""

    GATES, CELL, TORCH = 1, "rnn_tanh", nn.RNN
    state_names = ("h",)

    def _make_spec(self, dt: float, eps: float) -> HJSpec:
        return HJSpec(ElmanRNN(), viscosity=eps, step=ConstantStep(dt), scheme="euler")

