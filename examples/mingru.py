"""minGRU as an HJ spec: a user's architecture in 25 lines, run by hjseq's fused scan.

    h_k = h_{k−1} + Δ z_k ⊙ (h̃_k − h_{k−1}),   z = σ(W_z x),  h̃ = W_h x

is gated Euler on ``ḣ = h̃ − h`` (H = p·(h̃ − h)) with the data-dependent step Δz; at Δ = 1 it
is the minGRU of "Were RNNs All We Needed?". The field is affine in h (a = −1, b = h̃), so the
engine runs it through ``hjseq.ops.linear_scan`` with no kernel of its own. Config kind:
``kind = "examples.mingru:MinGRU"`` (from the repository root).
"""
import torch
from torch import nn

from hjseq.nn import RecurrentBlock
from hjseq.spec import DriveStep, Hamiltonian, HJSpec


class Relax(Hamiltonian):
    """``H = p·(h̃ − h)``: relax toward the token's candidate h̃ (drive "candidate")."""

    def affine(self, t, drive):
        return -1.0, drive["candidate"]


class MinGRU(RecurrentBlock):
    """x (B, L, input_size) -> (B, L, hidden_size); state h (B, hidden_size)."""

    def __init__(self, input_size: int, hidden_size: int, dt: float = 1.0, eps: float = 0.0,
                 scheme: str = "gated_euler", backend: str = "auto") -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.backend = input_size, hidden_size, backend
        self.proj = nn.Linear(input_size, 2 * hidden_size)
        self.spec = HJSpec(Relax(), viscosity=eps, step=DriveStep("z", dt), scheme=scheme)

    def state_shapes(self):
        return ((self.hidden_size,),)

    def prepare(self, x, state):
        z, candidate = self.proj(x).chunk(2, dim=-1)
        return {"z": torch.sigmoid(z), "candidate": candidate}, {}, state
