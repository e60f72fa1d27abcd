"""``HJLSTM``: the LSTM as Euler on the cell state, ``ċ = −(1 − f)⊙c + i⊙g``, with the gates
of the token held (computed from x_k and h_{k−1}) and the readout ``h = o⊙tanh(c)``:

    i, f, g, o = σ, σ, tanh, σ  of  W_ih x_k + b_ih + W_hh h_{k−1} + b_hh   (torch's order)
    c_k = c_{k−1} + Δ(−(1 − f)⊙c_{k−1} + i⊙g)  [+ √(2εΔ) ξ_k]
    h_k = o ⊙ tanh(c_k)

At Δ = 1, ε = 0 this is exactly ``torch.nn.LSTM`` (c_k = f⊙c + i⊙g). ε > 0 adds
√(2εΔ)ξ_k to c after each step in training mode only; eval mode is deterministic.
State: ``(h, c)``, each (B, H); the HJ flow moves c. Output: h_k for every token, (B, L, H).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hamiltonians import LSTM
from ..spec import ConstantStep, HJSpec
from .base import State, TorchCell


class HJLSTM(TorchCell):
    """``HJLSTM(input_size, hidden_size, bias=True, dt=1.0, eps=0.0, backend="auto",
    check_finite=False)``; parameters ``weight_ih`` (4H, I), ``weight_hh`` (4H, H),
    ``bias_ih``/``bias_hh`` (4H,) in torch's gate order (i, f, g, o). x (B, L, I) -> (B, L, H);
    state ``(h, c)``."""

    GATES, CELL, TORCH = 4, "lstm", nn.LSTM
    state_names = ("h", "c")

    def _make_spec(self, dt: float, eps: float) -> HJSpec:
        return HJSpec(LSTM(), viscosity=eps, step=ConstantStep(dt), scheme="euler")

    def token_drive(self, drive: dict[str, Tensor], state: State) -> dict[str, Tensor]:
        gates = drive["u"] + F.linear(state[0], drive["weight_hh"], drive.get("bias_hh"))
        i, f, g, o = gates.chunk(4, dim=-1)
        return {"i": torch.sigmoid(i), "f": torch.sigmoid(f), "g": torch.tanh(g),
                "o": torch.sigmoid(o)}

    def flow_state(self, state: State) -> Tensor:
        return state[1]

    def readout(self, c: Tensor, drive: dict[str, Tensor], state: State) -> tuple[Tensor, State]:
        h = drive["o"] * torch.tanh(c)
        return h, (h, c)

