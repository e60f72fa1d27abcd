"""Triton backend of ``selective_state_update`` (forward only: decoding needs no gradient).

One program owns (batch row, group, BLOCK_D channels) with the whole (BLOCK_D, N) state
tile: ``h' = Ā h + B̄ x``, ``out = (C·h' + D x) ⊙ silu(z)`` (see ref.py), in float32
(float64 for float64 inputs). The step factors are the selective scan's own helpers.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._registry import BackendUnavailable
from .._dtypes import accumulation_dtype
from .._triton_common import tl, tl_dtype, triton, unavailable_reason
from .ref import check_inputs

if triton is not None:
    from ..selective_scan.triton import _expm1_over_x, _softplus

    @triton.jit
    def _ssu_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, Dv_ptr, z_ptr, bias_ptr,
                    out_ptr, new_ptr, DG, N,
                    s_hb, s_hd, s_hn, s_xb, s_xd, s_tb, s_td, s_zb, s_zd, s_Ad, s_An,
                    s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn, s_nb, s_nd, s_nn, s_ob,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_D: tl.constexpr,
                    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    ZOH: tl.constexpr, ACC: tl.constexpr):
        b = tl.program_id(0)
        g = tl.program_id(1)
        dl = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = dl < DG
        d = g * DG + dl
        n = tl.arange(0, BLOCK_N)
        m2 = dmask[:, None] & (n < N)[None, :]
        h = tl.load(state_ptr + b * s_hb + d[:, None] * s_hd + n[None, :] * s_hn, mask=m2,
                    other=0.0).to(ACC)
        x = tl.load(x_ptr + b * s_xb + d * s_xd, mask=dmask, other=0.0).to(ACC)
        delta = tl.load(dt_ptr + b * s_tb + d * s_td, mask=dmask, other=0.0).to(ACC)
        if HAS_BIAS:
            delta += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)
        if SOFTPLUS:
            delta = _softplus(delta)
        A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=m2, other=0.0).to(ACC)
        Bv = tl.load(B_ptr + b * s_Bb + g * s_Bg + n * s_Bn, mask=n < N, other=0.0).to(ACC)
        Cv = tl.load(C_ptr + b * s_Cb + g * s_Cg + n * s_Cn, mask=n < N, other=0.0).to(ACC)
        dA = delta[:, None] * A
        if ZOH:
            s = delta[:, None] * _expm1_over_x(dA)
        else:
            s = delta[:, None] + tl.zeros_like(dA)
        h = tl.exp(dA) * h + s * Bv[None, :] * x[:, None]
        tl.store(new_ptr + b * s_nb + d[:, None] * s_nd + n[None, :] * s_nn, h, mask=m2)
        y = tl.sum(h * Cv[None, :], axis=1)
        if HAS_D:
            y += tl.load(Dv_ptr + d, mask=dmask, other=0.0).to(ACC) * x
        if HAS_Z:
            zv = tl.load(z_ptr + b * s_zb + d * s_zd, mask=dmask, other=0.0).to(ACC)
            y = y * zv * tl.sigmoid(zv)
        tl.store(out_ptr + b * s_ob + d, y, mask=dmask)


def selective_state_update_triton(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                                  C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                                  dt_bias: Tensor | None = None, dt_softplus: bool = False,
                                  scheme: str = "euler_b") -> tuple[Tensor, Tensor]:
    """Triton decoding step; same arguments and results as ``selective_state_update_ref``:
    state (B, D, N); x, dt, z (B, D); A (D, N); B, C (B, N) or (B, G, N); D, dt_bias (D,).
    Returns ``(out (B, D) in x's dtype, new_state (B, D, N) in state's dtype)``."""
    check_inputs(state, x, dt, A, B, C, D, z, dt_bias, scheme)
    batch, dim = x.shape
    N = state.shape[2]
    B3 = B.unsqueeze(1) if B.dim() == 2 else B  # (B, G, N)
    C3 = C.unsqueeze(1) if C.dim() == 2 else C
    G = B3.shape[1]
    DG = dim // G
    block_d = min(triton.next_power_of_2(DG), 16)
    out = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    new = torch.empty(state.shape, device=x.device, dtype=state.dtype)
    z_ = z if z is not None else x
    _ssu_kernel[(batch, G, triton.cdiv(DG, block_d))](
        state, x, dt, A, B3, C3, D if D is not None else x, z_,
        dt_bias if dt_bias is not None else x, out, new, DG, N,
        *state.stride(), *x.stride(), *dt.stride(), *z_.stride(), *A.stride(),
        *B3.stride(), *C3.stride(), *new.stride(), out.stride(0),
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(N), HAS_D=D is not None,
        HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        ZOH=scheme == "zoh", ACC=tl_dtype(accumulation_dtype(x.dtype)))
    return out, new


def load() -> Callable:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    return selective_state_update_triton
