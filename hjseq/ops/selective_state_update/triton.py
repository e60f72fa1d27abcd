"""Triton backend of ``selective_state_update`` (forward only: decoding needs no gradient).

Both layouts run as the heads layout (ref.canonical: channels = H = D, P = 1). One program
owns (batch row, head, BLOCK_P channels) with the whole (BLOCK_P, N) state tile:
``h' = Ā h + B̄ x``, ``out = (C·h' + D x) ⊙ silu(z)`` (see ref.py), in float32 (float64
for float64 inputs). Every tensor is read through its strides, so tied (stride-0) A, dt,
D, dt_bias need no copy; ``state_batch_indices`` picks the state row; the state is written
to ``new`` (``state`` itself when ``inplace``). The step factors are the selective scan's
own helpers.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._registry import BackendUnavailable
from .._dtypes import accumulation_dtype
from .._triton_common import tl, tl_dtype, triton, unavailable_reason
from .ref import canonical, check_inputs

if triton is not None:
    from ..selective_scan.triton import _expm1_over_x, _softplus

    @triton.jit
    def _ssu_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, Dv_ptr, z_ptr, bias_ptr,
                    out_ptr, new_ptr, idx_ptr, H, P, N, HPG,
                    s_h0, s_h1, s_h2, s_h3, s_x0, s_x1, s_x2, s_t0, s_t1, s_t2,
                    s_z0, s_z1, s_z2, s_A0, s_A1, s_A2, s_B0, s_B1, s_B2, s_C0, s_C1, s_C2,
                    s_D0, s_D1, s_b0, s_b1, s_n0, s_n1, s_n2, s_n3,
                    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_D: tl.constexpr,
                    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr,
                    SOFTPLUS: tl.constexpr, ZOH: tl.constexpr, ACC: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        g = h // HPG
        p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < P
        n = tl.arange(0, BLOCK_N)
        m2 = pmask[:, None] & (n < N)[None, :]
        row = b
        if HAS_IDX:
            row = tl.load(idx_ptr + b).to(tl.int64)
        hs = state_ptr + row * s_h0 + h * s_h1 + p[:, None] * s_h2 + n[None, :] * s_h3
        st = tl.load(hs, mask=m2, other=0.0).to(ACC)
        x = tl.load(x_ptr + b * s_x0 + h * s_x1 + p * s_x2, mask=pmask, other=0.0).to(ACC)
        delta = tl.load(dt_ptr + b * s_t0 + h * s_t1 + p * s_t2, mask=pmask,
                        other=0.0).to(ACC)
        if HAS_BIAS:
            delta += tl.load(bias_ptr + h * s_b0 + p * s_b1, mask=pmask, other=0.0).to(ACC)
        if SOFTPLUS:
            delta = _softplus(delta)
        A = tl.load(A_ptr + h * s_A0 + p[:, None] * s_A1 + n[None, :] * s_A2, mask=m2,
                    other=0.0).to(ACC)
        Bv = tl.load(B_ptr + b * s_B0 + g * s_B1 + n * s_B2, mask=n < N, other=0.0).to(ACC)
        Cv = tl.load(C_ptr + b * s_C0 + g * s_C1 + n * s_C2, mask=n < N, other=0.0).to(ACC)
        dA = delta[:, None] * A
        if ZOH:
            s = delta[:, None] * _expm1_over_x(dA)
        else:
            s = delta[:, None] + tl.zeros_like(dA)
        st = tl.exp(dA) * st + s * Bv[None, :] * x[:, None]
        tl.store(new_ptr + row * s_n0 + h * s_n1 + p[:, None] * s_n2 + n[None, :] * s_n3, st,
                 mask=m2)
        y = tl.sum(st * Cv[None, :], axis=1)
        if HAS_D:
            y += tl.load(Dv_ptr + h * s_D0 + p * s_D1, mask=pmask, other=0.0).to(ACC) * x
        if HAS_Z:
            zv = tl.load(z_ptr + b * s_z0 + h * s_z1 + p * s_z2, mask=pmask, other=0.0).to(ACC)
            y = y * zv * tl.sigmoid(zv)
        tl.store(out_ptr + (b * H + h) * P + p, y, mask=pmask)


def selective_state_update_triton(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                                  C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                                  dt_bias: Tensor | None = None, dt_softplus: bool = False,
                                  scheme: str = "euler_b",
                                  state_batch_indices: Tensor | None = None,
                                  inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Triton decoding step; same arguments and results as ``selective_state_update_ref``
    (channels or heads layout, ``state_batch_indices``, ``inplace``)."""
    check_inputs(state, x, dt, A, B, C, D, z, dt_bias, scheme, state_batch_indices)
    c = canonical(state, x, dt, A, B, C, D, z, dt_bias)
    batch, H, P = c.x.shape
    N = c.state.shape[-1]
    if inplace:
        new = state
    elif state_batch_indices is None:
        new = torch.empty(state.shape, device=x.device, dtype=state.dtype)
    else:
        new = state.clone()
    new4 = new if c.heads else new.unsqueeze(2)
    out = torch.empty(batch, H, P, device=x.device, dtype=x.dtype)
    z_ = c.z if c.z is not None else c.x
    Dv = c.D if c.D is not None else c.x[0]
    bias = c.dt_bias if c.dt_bias is not None else c.x[0]
    idx = state_batch_indices if state_batch_indices is not None else c.x
    block_p = min(triton.next_power_of_2(P), 16)
    _ssu_kernel[(batch, H, triton.cdiv(P, block_p))](
        c.state, c.x, c.dt, c.A, c.B, c.C, Dv, z_, bias, out, new4, idx, H, P, N,
        H // c.B.shape[1], *c.state.stride(), *c.x.stride(), *c.dt.stride(), *z_.stride(),
        *c.A.stride(), *c.B.stride(), *c.C.stride(), *Dv.stride(), *bias.stride(),
        *new4.stride(), BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(N),
        HAS_D=c.D is not None, HAS_Z=c.z is not None, HAS_BIAS=c.dt_bias is not None,
        HAS_IDX=state_batch_indices is not None, SOFTPLUS=bool(dt_softplus),
        ZOH=scheme == "zoh", ACC=tl_dtype(accumulation_dtype(x.dtype)))
    return (out if c.heads else out[..., 0]), new


def load() -> Callable:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    return selective_state_update_triton
