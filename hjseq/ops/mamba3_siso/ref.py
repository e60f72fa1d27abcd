"""Executable definition of Mamba-3's SISO scan (exponential-trapezoidal, rotary), sequential.

Per batch b and head i (reading Q/K head i // (h // h_qk)), with a (p, n) state S, token by
token (a transcription of the recurrence of mamba-ssm's pure-torch test reference):

    θ_t = π·tanh(Angles_t)                               (h, a)   rates of the rotary pairs
    φ_t = (φ_{t−1} + DT_t·θ_t) mod 2π                    angle state
    q̃_t = R(φ_t)(Q_t + Q_bias),  k̃_t = R(φ_t)(K_t + K_bias)
    λ_t = σ(Trap_t),  α_t = exp(ADT_t),  β_t = (1 − λ_t)·DT_t·α_t,  γ_t = λ_t·DT_t
    S_t = α_t S_{t−1} + β_t v_{t−1} ⊗ k̃_{t−1} + γ_t v_t ⊗ k̃_t
    y_t = (S_t q̃_t + D v_t) · silu(Z_t)

R(φ) rotates the pairs (2j, 2j+1), j < a, by φ_j (the other coordinates are not rotated);
(k̃_{t−1}, v_{t−1}) start from the K and V states. Layouts (mamba-ssm's
``mamba3_siso_combined``): Q, K (b, l, h_qk, n); V, Z (b, l, h, p); ADT, DT, Trap (b, h, l);
Q_bias, K_bias (h, n); Angles (b, l, h, a); D (h,); states (angle (s, h, a), ssm
(s, h, p, n), k (s, h, n), v (s, h, p)). Computed in float32 (float64 for float64 inputs).
With ``cu_seqlens`` (s+1,) the batch is 1 and l packs s sequences, each from its own state.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from hjseq.ops._dtypes import accumulation_dtype

TWO_PI = 2 * math.pi


def rotate_pairs(X: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs (X[..., 2j], X[..., 2j+1]) of X (..., n) by the angles whose cos/sin
    are (..., a), a ≤ n/2; coordinates from 2a on are returned unchanged."""
    a = cos.shape[-1]
    head, tail = X[..., :2 * a], X[..., 2 * a:]
    x0, x1 = head[..., 0::2], head[..., 1::2]
    rot = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return torch.cat((rot, tail), dim=-1)


def run_sequence(Q, K, V, ADT, DT, Trap, Qb, Kb, Angles, D, Z, states):
    """One sequence, time first: Q, K (l, *, h, n) (already expanded to h heads); V, Z
    (l, *, h, p); ADT, DT, Trap (l, *, h); Angles (l, *, h, a); states (*, h, a),
    (*, h, p, n), (*, h, n), (*, h, p) (* = any leading batch axes)."""
    phi, S, k_prev, v_prev = states
    theta = torch.tanh(Angles) * math.pi
    ys = []
    for t in range(Q.shape[0]):
        phi = phi + theta[t] * DT[t][..., None]
        phi = phi - TWO_PI * torch.floor(phi / TWO_PI)
        cos, sin = torch.cos(phi), torch.sin(phi)
        q = rotate_pairs(Q[t] + Qb, cos, sin)
        k = rotate_pairs(K[t] + Kb, cos, sin)
        lam = torch.sigmoid(Trap[t])
        alpha = torch.exp(ADT[t])
        beta = (1 - lam) * DT[t] * alpha
        gamma = lam * DT[t]
        S = (alpha[..., None, None] * S
             + beta[..., None, None] * v_prev[..., :, None] * k_prev[..., None, :]
             + gamma[..., None, None] * V[t][..., :, None] * k[..., None, :])
        y = torch.einsum("...pn,...n->...p", S, q)
        if D is not None:
            y = y + D[:, None] * V[t]
        if Z is not None:
            y = y * Z[t] * torch.sigmoid(Z[t])
        ys.append(y)
        k_prev, v_prev = k, V[t]
    y = torch.stack(ys) if ys else V.new_zeros(V.shape)
    return y, (phi, S, k_prev, v_prev)


def mamba3_siso_ref(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
                    Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, D: Tensor | None = None,
                    Z: Tensor | None = None,
                    Input_States: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
                    chunk_size: int = 64, return_final_states: bool = False,
                    cu_seqlens: Tensor | None = None):
    acc = accumulation_dtype(V.dtype)
    batch, L, hq, n = Q.shape
    heads, p = V.shape[2], V.shape[3]
    a = Angles.shape[-1]
    f = lambda X: None if X is None else X.to(acc)  # noqa: E731
    rep = heads // hq
    Qe, Ke = f(Q).repeat_interleave(rep, dim=2), f(K).repeat_interleave(rep, dim=2)
    Vf, Zf, Af = f(V), f(Z), f(Angles)
    tl = lambda X: f(X).transpose(1, 2)  # (b, h, l) -> (b, l, h)  # noqa: E731
    ADTf, DTf, Trapf = tl(ADT), tl(DT), tl(Trap)
    Qb, Kb, Df = f(Q_bias), f(K_bias), f(D)
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        spans = [(0, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    else:
        spans = [(b, 0, L) for b in range(batch)]
    ys, finals = [], []
    for s, (b, lo, hi) in enumerate(spans):
        if Input_States is not None:
            st = tuple(X[s].to(acc) for X in Input_States)
        else:
            st = (Vf.new_zeros(heads, a), Vf.new_zeros(heads, p, n), Vf.new_zeros(heads, n),
                  Vf.new_zeros(heads, p))
        sl = slice(lo, hi)
        y, fin = run_sequence(Qe[b, sl], Ke[b, sl], Vf[b, sl], ADTf[b, sl], DTf[b, sl],
                               Trapf[b, sl], Qb, Kb, Af[b, sl], Df,
                               None if Zf is None else Zf[b, sl], st)
        ys.append(y)
        finals.append(fin)
    if cu_seqlens is not None:
        y = torch.cat(ys, dim=0).unsqueeze(0)
    else:
        y = torch.stack(ys, dim=0)
    y = y.to(V.dtype)
    if not return_final_states:
        return y
    angle, ssm, k, v = (torch.stack([fin[i] for fin in finals]) for i in range(4))
    return y, angle, ssm, k.to(K.dtype), v.to(V.dtype)


def load():
    return mamba3_siso_ref
