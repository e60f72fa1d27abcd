"""``mamba3_siso`` cpu backend: fused C++ passes (``csrc/cpu/mamba3_siso.cpp``) around
``ssd_scan``'s chunked C++ kernel (``csrc/cpu/ssd.cpp``).

The reduction is chunked.py's (the shifted state ``U_t = S_t + δ_{t+1} v_t ⊗ k̃_t`` is a
plain SSD scan with x = (γ + δn) v, log-decay ADT, B = k̃, C = q̃); here it runs as

    prep_forward      one pass per (sequence, head): φ (cumulative, mod 2π), cos/sin once per
                      (b, l, h, a), q̃ and k̃ with the biases, q̃·k̃, x, ADT transposed,
                      coef = D − δn (q̃·k̃), U_0 from the input states
    ssd forward       csrc/cpu/ssd.cpp
    epilogue_forward  out = (y + coef v) silu(Z), one pass

and the backward in the reverse order (epilogue, ssd backward, then the preprocessing's
adjoint in a pass over token rows and one backwards in time per (sequence, head)), all in
one autograd Function. Computed in float32 (float64 for float64 inputs): the other dtypes
are cast here, and autograd casts their gradients back.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from .._build import DEFAULT_CFLAGS, load_extension
from .._dtypes import accumulation_dtype

States = tuple[Tensor, Tensor, Tensor, Tensor]


def _ext() -> ModuleType:
    # -ffp-contract=fast: a*b + c may become one FMA (-std=c++17 turns contraction off)
    return load_extension("mamba3_siso", ["cpu/mamba3_siso.cpp"],
                          extra_cflags=[*DEFAULT_CFLAGS, "-ffp-contract=fast"])


def _ssd_ext() -> ModuleType:
    from ..ssd.cpu import _ext as ssd_ext
    return ssd_ext()


class _Mamba3SisoCpu(torch.autograd.Function):
    """(out (b, l, h, p), φ_T (s, h, a), S_T (s, h, p, n), k̃_T (s, h, n)) from contiguous
    tensors of one float dtype (float32 or float64); D, Z and the three states may be None
    (the states all or none)."""

    @staticmethod
    def forward(ctx, Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
                Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, D: Tensor | None,
                Z: Tensor | None, angle0: Tensor | None, S0: Tensor | None,
                k0: Tensor | None, v0: Tensor | None, cu: Tensor, varlen: bool,
                chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        qt, kt, x, ld, tok, phi, init_t, phi_T, k_T = _ext().prep_forward(
            Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, angle0, S0, k0, v0, cu, varlen)
        y, fin_t, st = _ssd_ext().forward(x, ld, kt, qt, init_t, cu, varlen, chunk)
        # y becomes the pre-gate output, kept for dZ only when a gradient is wanted (else the
        # gate is applied in place)
        keep_y = Z is not None and any(ctx.needs_input_grad)
        out = _ext().epilogue_forward(y, V, tok, Z, keep_y)
        ctx.save_for_backward(Q, K, V, DT, Trap, Q_bias, K_bias, Angles, Z, S0, k0, v0, qt, kt,
                              x, ld, tok, phi, st, y if keep_y else None, cu)
        ctx.flags = (varlen, chunk, D is not None)
        ctx.set_materialize_grads(False)
        return out, phi_T, fin_t.transpose(-1, -2).contiguous(), k_T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor | None, dphi_T: Tensor | None, dS_T: Tensor | None,
                 dk_T: Tensor | None):
        (Q, K, V, DT, Trap, Q_bias, K_bias, Angles, Z, S0, k0, v0, qt, kt, x, ld, tok, phi,
         st, ypre, cu) = ctx.saved_tensors
        varlen, chunk, has_D = ctx.flags
        c = lambda g: None if g is None else g.to(V.dtype).contiguous()  # noqa: E731
        dout = torch.zeros_like(V) if dout is None else c(dout)
        dfin_t = None if dS_T is None else c(dS_T.transpose(-1, -2))
        dy, dZ, dcoef = _ext().epilogue_backward(dout, ypre, V, tok, Z)
        dx, dld, dkt, dqt, dinit_t = _ssd_ext().backward(dy, dfin_t, x, ld, kt, qt, st, cu,
                                                         varlen, chunk)
        # dV is written over dy when dy is ours (with Z; without Z it is dout itself)
        dV = dy if Z is not None else torch.empty_like(V)
        (dQ, dK, dADT, dDT, dTrap, dQb, dKb, dAng, dD, dang0, dS0, dk0,
         dv0) = _ext().prep_backward(dx, dld, dkt, dqt, dinit_t, c(dphi_T), c(dk_T), dy, dcoef,
                                     dV, Q, K, V, DT, Trap, Q_bias, K_bias, Angles, S0, k0, v0,
                                     tok, phi, cu, varlen, has_D)
        if S0 is None:
            dang0 = None
        return (dQ, dK, dV, dADT, dDT, dTrap, dQb, dKb, dAng, dD, dZ, dang0, dS0, dk0, dv0,
                None, None, None)


def mamba3_siso_cpu(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
                    Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, D: Tensor | None = None,
                    Z: Tensor | None = None, Input_States: States | None = None,
                    chunk_size: int = 64, return_final_states: bool = False,
                    cu_seqlens: Tensor | None = None):
    """Arguments, shapes and result as ``ref.mamba3_siso_ref``; inputs are assumed validated
    (``mamba3_siso`` does it)."""
    acc = accumulation_dtype(V.dtype)
    c = lambda X: None if X is None else X.to(acc).contiguous()  # noqa: E731
    varlen = cu_seqlens is not None
    cu = (cu_seqlens.to(torch.int64).contiguous() if varlen
          else torch.tensor([0, Q.shape[1]], dtype=torch.int64))
    states = (None,) * 4 if Input_States is None else tuple(Input_States)
    out, phi_T, S_T, k_T = _Mamba3SisoCpu.apply(
        c(Q), c(K), c(V), c(ADT), c(DT), c(Trap), c(Q_bias), c(K_bias), c(Angles), c(D), c(Z),
        *(c(X) for X in states), cu, varlen, int(chunk_size))
    y = out.to(V.dtype)
    if not return_final_states:
        return y
    v_T = V[0, cu[1:] - 1] if varlen else V[:, -1].clone()
    return y, phi_T, S_T, k_T.to(K.dtype), v_T


def load():
    """Build (or reuse) both extensions; raises BackendUnavailable if either cannot be built."""
    _ext()
    _ssd_ext()
    return mamba3_siso_cpu
