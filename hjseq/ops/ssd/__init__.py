"""``ssd``: Mamba-2's state-space duality scan, chunked (see ref.py for the definition).

``ssd_scan`` is the core op (``S_t = exp(log_decay_t)·S_{t−1} + x_t ⊗ B_t``,
``y_t = S_t·C_t``), dispatched to a backend (hjseq/ops/_registry.py); ``ssd`` is the call
of mamba-ssm's ``mamba_chunk_scan_combined``: it turns (dt, A, dt_bias, D, z, seq_idx)
into the core op's (x·step, log_decay) with a few (b, l, h) torch ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._dispatch import dispatch
from .._dtypes import accumulation_dtype
from .._registry import register
from ..selective_scan.ref import phi1
from .checks import SCHEMES, validate_scan, validate_ssd

OP = "ssd_scan"
register(OP, "ref", "hjseq.ops.ssd.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.ssd.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.ssd.triton", devices=("cuda", "cpu"))

__all__ = ["ssd", "ssd_scan", "SCHEMES"]


def ssd_scan(x: Tensor, log_decay: Tensor, B: Tensor, C: Tensor,
             initial_states: Tensor | None = None, cu_seqlens: Tensor | None = None,
             return_final_states: bool = False, chunk_size: int = 64,
             backend: str = "auto"):
    """Chunked matrix-state scan, per head (head i reads group i // (h // g)):

        S_t = exp(log_decay_t) · S_{t−1} + x_t ⊗ B_t,    y_t = S_t · C_t

    x (b, l, h, p); log_decay (b, l, h) (−inf = full reset); B, C (b, l, g, n) with g | h;
    initial_states (b, h, p, n), or (s, h, p, n) with ``cu_seqlens`` (s+1,) packing s
    sequences along l (b = 1). Returns y (b, l, h, p) in x's dtype, or ``(y, final_states)``
    (final states float32, float64 for float64 inputs). ``chunk_size`` changes only
    round-off. Differentiable in x, log_decay, B, C, initial_states.
    """
    validate_scan(x, log_decay, B, C, initial_states, cu_seqlens, chunk_size)
    kwargs = dict(x=x, log_decay=log_decay, B=B, C=C, initial_states=initial_states,
                  cu_seqlens=cu_seqlens, return_final_states=return_final_states,
                  chunk_size=chunk_size)
    return dispatch(OP, backend, x.device.type, kwargs)


def ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
        D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
        initial_states: Tensor | None = None, seq_idx: Tensor | None = None,
        cu_seqlens: Tensor | None = None, dt_softplus: bool = False,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        return_final_states: bool = False, scheme: str = "euler_b", backend: str = "auto"):
    """Mamba-2's SSD, the call of mamba-ssm's ``mamba_chunk_scan_combined``.

    x, z (b, l, h, p); dt (b, l, h); A, dt_bias (h,); B, C (b, l, g, n); D (h,) or (h, p);
    initial_states (b, h, p, n) (or (s, h, p, n) with ``cu_seqlens``); seq_idx (b, l) int
    (the state restarts where it changes). With Δ = dt (+ dt_bias, softplus if asked,
    clamped to ``dt_limit`` when it is not the default (0, inf)), per head:

        S_t = exp(Δ_t A) S_{t−1} + β_t x_t ⊗ B_t,   y_t = S_t·C_t + D x_t,   out = y·silu(z)

    with β = Δ (``scheme="euler_b"``, Mamba-2's) or β = Δ·φ₁(ΔA), φ₁(u) = (eᵘ − 1)/u
    (``"zoh"``: the exact flow of Ṡ = A S + x Bᵀ with x held over the step). Returns out
    (b, l, h, p) in x's dtype, or ``(out, final_states)`` (float32, float64 for float64).
    """
    validate_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                 cu_seqlens, dt_limit, scheme)
    acc = accumulation_dtype(x.dtype)
    delta = dt.to(acc)
    if dt_bias is not None:
        delta = delta + dt_bias.to(acc)
    if dt_softplus:
        delta = F.softplus(delta)
    if tuple(dt_limit) != (0.0, float("inf")):  # mamba-ssm clamps only a non-default limit
        delta = delta.clamp(min=float(dt_limit[0]), max=float(dt_limit[1]))
    dA = delta * A.to(acc)
    step = delta if scheme == "euler_b" else delta * phi1(dA)
    log_decay = dA
    if seq_idx is not None:  # a new sequence id resets the state: decay exp(−inf) = 0
        reset = torch.zeros_like(seq_idx, dtype=torch.bool)
        reset[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
        log_decay = dA.masked_fill(reset[..., None], float("-inf"))
    xs = x.to(acc) * step[..., None]
    res = ssd_scan(xs, log_decay, B, C, initial_states=initial_states, cu_seqlens=cu_seqlens,
                   return_final_states=return_final_states, chunk_size=chunk_size,
                   backend=backend)
    y, final = res if return_final_states else (res, None)
    if D is not None:
        Dx = D.to(acc)[:, None] if D.dim() == 1 else D.to(acc)
        y = y + x.to(acc) * Dx
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(x.dtype)
    return (y, final) if return_final_states else y
