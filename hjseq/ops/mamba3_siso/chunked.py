"""Mamba-3's SISO scan through Mamba-2's chunked ``ssd_scan``: the reduction, and the torch
implementation the triton backend runs (the cpu backend runs the same reduction in fused C++
passes, ``cpu.py``).

The exponential-trapezoidal recurrence of ``ref.py``,

    S_t = α_t S_{t−1} + β_t v_{t−1} ⊗ k̃_{t−1} + γ_t v_t ⊗ k̃_t,   β_t = δ_t α_t,
    γ_t = λ_t Δ_t,  δ_t = (1 − λ_t) Δ_t,

is a plain SSD scan of the shifted state ``U_t = S_t + δ_{t+1} v_t ⊗ k̃_t`` (the part of
token t's input that the *next* token's β will add, taken in at t):

    U_t = α_t U_{t−1} + (γ_t + δ_{t+1}) v_t ⊗ k̃_t                 (δ_{t+1} = 0 at a sequence end)
    y_t = U_t q̃_t − δ_{t+1} (q̃_t·k̃_t) v_t,      S_T = U_T,      U_0 = S_0 + δ_1 v_0 ⊗ k̃_0

so the scan input is v_t scaled by (γ_t + δ_{t+1}) with B = k̃, C = q̃ and log-decay ADT, and
the rest is a per-token diagonal term. (Equivalently ``K_t = S_t − γ_t v_t ⊗ k̃_t`` obeys
``K_t = α_t K_{t−1} + (α_t γ_{t−1} + β_t) v_{t−1} ⊗ k̃_{t−1}``; the form above needs no
shifted copy of v and k̃, only of the (b, l, h) scalars.) The rotary angles, biases and the
gate are (b, l, h, ·) torch ops around the scan; autograd differentiates them and the scan.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._dtypes import accumulation_dtype
from .._registry import resolve
from .ref import TWO_PI


class _Turn(torch.autograd.Function):
    """``(q, k) = (R(φ) q_in, R(φ) k_in)``: the first a pairs of the last axis (n) turned by
    φ (b, l, h, a) as one complex product each (pairs past a multiplied by 1). The backward
    turns the gradients back (R(φ)ᵀ) and gives ``∂L/∂φ = Σ_{q,k} (out₀ g₁ − out₁ g₀)`` on
    the a turned pairs only."""

    @staticmethod
    def forward(ctx, q_in: Tensor, k_in: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        a, n = phi.shape[-1], q_in.shape[-1]
        rot = torch.polar(torch.ones_like(phi), phi)
        if 2 * a < n:
            rot = torch.cat((rot, rot.new_ones(*phi.shape[:-1], n // 2 - a)), dim=-1)
        q, k = (torch.view_as_real(_pairs(X) * rot).reshape(X.shape) for X in (q_in, k_in))
        ctx.save_for_backward(q, k, rot)
        ctx.a = a
        return q, k

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gq: Tensor, gk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, rot = ctx.saved_tensors
        a, back = ctx.a, rot.conj()
        out = []
        dphi = None
        for g, o in ((gq, q), (gk, k)):
            gc = _pairs(g.contiguous())
            out.append(torch.view_as_real(gc * back).reshape(g.shape))
            d = (_pairs(o)[..., :a].conj() * gc[..., :a]).imag
            dphi = d if dphi is None else dphi + d
        return out[0], out[1], dphi


def _pairs(X: Tensor) -> Tensor:
    """(..., n) real -> (..., n/2) complex view of the pairs (2j, 2j+1)."""
    return torch.view_as_complex(X.view(*X.shape[:-1], X.shape[-1] // 2, 2))


def _segments(cu_seqlens: Tensor | None, batch: int, L: int, device: torch.device):
    """(seg (b, l) long: the sequence each token belongs to, first (s,) and last (s,) token
    index along l, row (s,) batch row of each sequence)."""
    if cu_seqlens is None:
        ar = torch.arange(batch, device=device)
        return (ar[:, None].expand(batch, L), torch.zeros_like(ar),
                torch.full_like(ar, L - 1), ar)
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths,
                                  output_size=L)
    return seg[None], cu[:-1], cu[1:] - 1, torch.zeros_like(lengths)


def mamba3_siso_chunked(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor,
                        Trap: Tensor, Q_bias: Tensor, K_bias: Tensor, Angles: Tensor,
                        D: Tensor | None = None, Z: Tensor | None = None,
                        Input_States: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
                        chunk_size: int = 64, return_final_states: bool = False,
                        cu_seqlens: Tensor | None = None, ssd_backend: str = "auto"):
    from ..ssd import ssd_scan

    acc = accumulation_dtype(V.dtype)
    batch, L, hq, n = Q.shape
    heads = V.shape[2]
    a = Angles.shape[-1]
    seg, first, last, row = _segments(cu_seqlens, batch, L, Q.device)
    tl = lambda X: X.to(acc).transpose(1, 2)  # (b, h, l) -> (b, l, h)  # noqa: E731
    adt, dt, lam = tl(ADT), tl(DT), torch.sigmoid(tl(Trap))

    # cumulative angles, restarted per sequence (from the input angle state); the running
    # sum turns q and k directly, the mod 2π is applied to the returned state only
    inc = torch.tanh(Angles.to(acc)) * (math.pi * dt[..., None])          # (b, l, h, a)
    cs = inc.cumsum(dim=1)
    if cu_seqlens is not None:  # subtract the running sum before each sequence's start
        before = torch.cat((cs.new_zeros(1, 1, heads, a), cs[:, :-1]), dim=1)[0, first]
        cs = cs - before[seg[0]][None]
    if Input_States is not None:
        cs = cs + Input_States[0].to(acc)[seg]

    rep = heads // hq
    g = lambda X, bias: (X.to(acc)[:, :, :, None, :]  # noqa: E731  (b, l, h, n): + bias
                         + bias.to(acc).view(hq, rep, n)).reshape(batch, L, heads, n)
    q, k = _Turn.apply(g(Q, Q_bias), g(K, K_bias), cs)
    # q̃·k̃ = (Q + Q_bias)·(K + K_bias) (a rotation keeps it), from the (b, l, h_qk, n) inputs
    Qa, Ka = Q.to(acc), K.to(acc)
    Qbias, Kbias = Q_bias.to(acc).view(hq, rep, n), K_bias.to(acc).view(hq, rep, n)
    qk = ((Qa * Ka).sum(-1)[..., None] + torch.einsum("blgn,grn->blgr", Qa, Kbias)
          + torch.einsum("blgn,grn->blgr", Ka, Qbias)
          + (Qbias * Kbias).sum(-1)).reshape(batch, L, heads)

    delta = (1 - lam) * dt                                                 # δ_t (b, l, h)
    delta_next = F.pad(delta[:, 1:], (0, 0, 0, 1))
    is_last = torch.zeros(batch, L, 1, dtype=torch.bool, device=Q.device)
    is_last[row, last] = True
    delta_next = delta_next.masked_fill(is_last, 0.0)
    v = V.to(acc)
    xs = v * (lam * dt + delta_next)[..., None]

    init = None
    if Input_States is not None:
        _, S0, k0, v0 = (X.to(acc) for X in Input_States)
        d1 = delta[row, first]                                             # (s, h)
        init = S0 + d1[..., None, None] * v0[..., :, None] * k0[..., None, :]
    y, S_T = ssd_scan(xs, adt, k, q, initial_states=init, cu_seqlens=cu_seqlens,
                      return_final_states=True, chunk_size=chunk_size, backend=ssd_backend)
    coef = -delta_next * qk                                  # the per-token diagonal term
    if D is not None:
        coef = coef + D.to(acc)
    y = torch.addcmul(y, v, coef[..., None])
    if Z is not None:
        y = y * F.silu(Z.to(acc))
    y = y.to(V.dtype)
    if not return_final_states:
        return y
    phi = cs[row, last]
    phi = phi - TWO_PI * torch.floor(phi / TWO_PI)
    return (y, phi, S_T, k[row, last].to(K.dtype), V[row, last])


def bound(ssd_backend: str) -> Callable:
    """``mamba3_siso_chunked`` on a fixed ``ssd_scan`` backend; raises BackendUnavailable
    when that backend cannot load here (so "auto" skips it)."""
    from .. import ssd  # noqa: F401  (registers ssd_scan's backends)

    device = "cuda" if ssd_backend != "cpu" and torch.cuda.is_available() else "cpu"
    resolve("ssd_scan", ssd_backend, device)
    return partial(mamba3_siso_chunked, ssd_backend=ssd_backend)
