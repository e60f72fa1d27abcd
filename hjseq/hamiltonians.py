"""The per-architecture Hamiltonians (one small class each).

All but :class:`Quadratic` are control-affine, ``H(t, h, p; x) = p·F(t, h; x)``; ``F`` is
:meth:`velocity`. Parameters are owned by the blocks (so their names match torch/mamba);
a Hamiltonian reads them, and the token's input projections, from ``drive``:

=============  ===========================================================  =====================
class          F(t, h; x)                                                   drive keys
=============  ===========================================================  =====================
Quadratic      H = |p|² (not affine): ḣ = 2p, ṗ = 0                         ``p``
ElmanRNN       −h + tanh(u + W_hh h + b_hh),  u = W_ih x + b_ih             ``u, weight_hh, bias_hh``
GRU            n − h,  n = tanh(u_n + r⊙(W_hn h + b_hn)),                   ``u, weight_hh, bias_hh``
               r = σ(u_r + W_hr h + b_hr);  step gate 1 − s,
               s = σ(u_z + W_hz h + b_hz)   (torch's z)
LSTM           −(1 − f)⊙c + i⊙g  (state c; gates held over the token)       ``i, f, g``
LinearSSM      A⊙h + B u  (state (D, N), A diagonal)                        ``A, B, u``
HeadLinearSSM  a S + x Bᵀ per head (state (H, P, N), one rate a per head)    ``a, x, B``
=============  ===========================================================  =====================

Shapes: hidden (B, H); ``u`` (B, H) (RNN) or (B, 3H) (GRU, gate order r, z, n as torch);
``weight_hh`` (G·H, H); ``bias_hh`` (G·H,) or absent/None. SSM: h (B, D, N), ``A`` (D, N),
``B`` (B, N) or (B, D, N), ``u`` (B, D). HeadLinearSSM: S (B, H, P, N), ``a`` (H,) or (B, H),
``x`` (B, H, P), ``B`` (B, G, N) with H divisible by G.

The structure a Hamiltonian declares (``affine``, ``head_affine``) is what the engine's
fused paths key on; see :meth:`hjseq.spec.Hamiltonian.structures`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import Drive, Hamiltonian, expand_groups


def _linear(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.linear(h, weight, bias)


class Quadratic(Hamiltonian):
    """``H = |p|²`` — the viscous HJ equation ``u_t + |∇u|² = εΔu`` of the LSE and attention
    blocks. Characteristics are straight lines: ``ḣ = 2p``, ``ṗ = 0``, ``u̇ = |p|²``. The
    co-state is held, so ``velocity`` reads it from ``drive["p"]`` (shape of h)."""

    def hamiltonian(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        return (p * p).sum(-1)

    def dH_dp(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        return 2 * p

    def dH_dh(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        return torch.zeros_like(h)

    def velocity(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        return 2 * drive["p"]

    @classmethod
    def structures(cls) -> frozenset[str]:
        return frozenset({"velocity", "quadratic"})


class ElmanRNN(Hamiltonian):
    """``H = p·(−h + tanh(u + W_hh h + b_hh))``, u = W_ih x + b_ih. Euler at Δ = 1 is
    torch's ``nn.RNN(nonlinearity="tanh")``."""

    def velocity(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        a = torch.tanh(drive["u"] + _linear(h, drive["weight_hh"], drive.get("bias_hh")))
        return a - h

    def dH_dh(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        # ∂F/∂h = −I + diag(1 − a²) W_hh  ⇒  (∂F/∂h)ᵀ p = −p + W_hhᵀ ((1 − a²) ⊙ p)
        a = torch.tanh(drive["u"] + _linear(h, drive["weight_hh"], drive.get("bias_hh")))
        return -p + ((1 - a * a) * p) @ drive["weight_hh"]


class GRU(Hamiltonian):
    """``H = p·(n − h)`` with the reset-gated candidate n; the update gate enters as the
    per-coordinate step ``Δ(1 − s)`` (:meth:`update_gate`, used by ``GateStep``), so the
    gated-Euler step is ``h ← h + Δ(1 − s)⊙(n − h)`` — torch's ``nn.GRU`` at Δ = 1."""

    @staticmethod
    def _split(drive: Drive) -> tuple[Tensor, Tensor, Tensor | None]:
        return drive["u"], drive["weight_hh"], drive.get("bias_hh")

    def velocity(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        u, W, b = self._split(drive)
        H = h.shape[-1]
        u_r, _, u_n = u.split(H, dim=-1)
        W_r, _, W_n = W.split(H, dim=0)
        b_r, b_n = (None, None) if b is None else (b[:H], b[2 * H:])
        r = torch.sigmoid(u_r + _linear(h, W_r, b_r))
        n = torch.tanh(u_n + r * _linear(h, W_n, b_n))
        return n - h

    def update_gate(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        """``1 − s`` with ``s = σ(u_z + W_hz h + b_hz)`` (torch's z): the step fraction (B, H)."""
        u, W, b = self._split(drive)
        H = h.shape[-1]
        s = torch.sigmoid(u[..., H:2 * H] + _linear(h, W[H:2 * H], None if b is None
                                                   else b[H:2 * H]))
        return 1 - s


class LSTM(Hamiltonian):
    """``H = p_c·(−(1 − f)⊙c + i⊙g)`` on the cell state c, with the gates i, f (sigmoid) and
    g (tanh) of the token held (computed from x_k and h_{k−1}); linear in c, so the
    exponential schemes apply too. Euler at Δ = 1 gives ``c ← f⊙c + i⊙g``, and the readout
    ``h = o⊙tanh(c)`` gives torch's ``nn.LSTM``."""

    def velocity(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        return -(1 - drive["f"]) * h + drive["i"] * drive["g"]

    def affine(self, t: float, drive: Drive) -> tuple[Tensor, Tensor]:
        return -(1 - drive["f"]), drive["i"] * drive["g"]

    def dH_dh(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        return -(1 - drive["f"]) * p


class LinearSSM(Hamiltonian):
    """``H = p·(A h + B u)`` — the S4D/Mamba state space model, per channel d and state
    index n: ``ḣ_{dn} = A_{dn} h_{dn} + B_n u_d``. h: (B, D, N); A: (D, N); B: (B, N) or
    (B, D, N); u: (B, D). ``zoh`` integrates it exactly with u held; ``euler_b`` is Mamba's."""

    state_dims = 2

    @staticmethod
    def _input(drive: Drive) -> Tensor:
        B = drive["B"]
        if B.dim() == 2:
            B = B.unsqueeze(-2)
        return B * drive["u"].unsqueeze(-1)

    def velocity(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        return drive["A"] * h + self._input(drive)

    def affine(self, t: float, drive: Drive) -> tuple[Tensor, Tensor]:
        return drive["A"], self._input(drive)

    def dH_dh(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        return drive["A"] * p


class HeadLinearSSM(Hamiltonian):
    """``H = ⟨P, a ⊙ S + x Bᵀ⟩`` per head: a matrix state ``S_h ∈ R^{P×N}`` decaying at one
    rate ``a_h`` (≤ 0 for a stable flow) and driven by the outer product of the token's
    ``x_h`` (P) and ``B`` (N) — the flow of Mamba-2's SSD, of retention (fixed a per head)
    and of gated linear attention. ``ḣ`` is :meth:`head_affine`'s ``a S + x Bᵀ``; ``euler_b``
    gives Mamba-2's ``S ← e^{Δa} S + Δ x Bᵀ``, ``zoh`` the exact flow with x, B held.
    Drive: ``a`` (H,) or (B, H), ``x`` (B, H, P), ``B`` (B, G, N)."""

    state_dims = 3

    def head_affine(self, t: float, drive: Drive) -> tuple[Tensor, Tensor, Tensor]:
        x = drive["x"]
        return drive["a"].expand(x.shape[:-1]), x, drive["B"]

    def dH_dh(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        x = drive["x"]
        return drive["a"].expand(x.shape[:-1])[..., None, None] * p


__all__ = ["Quadratic", "ElmanRNN", "GRU", "LSTM", "LinearSSM", "HeadLinearSSM",
           "expand_groups"]
