"""``mamba3_siso`` cpu backend: fused C++ passes (``csrc/cpu/mamba3_siso.cpp``) around
``ssd_scan``'s chunked C++ kernel (``csrc/cpu/ssd.cpp``).

The reduction is chunked.py's (the shifted state ``U_t = S_t + δ_{t+1} v_t ⊗ k̃_t`` is a
plain SSD scan with x = (γ + δn) v, log-decay ADT, B = k̃, C = q̃); here it runs as

    prep_forward      φ (cumulative, mod 2π) in time order per (sequence, block of heads);
                      then per token row: cos/sin once per (b, l, h, a), q̃ and k̃ with the
                      biases, q̃·k̃, x, coef = D − δn (q̃·k̃); ADT transposed; U_0 from the
                      input states
    ssd forward       csrc/cpu/ssd.cpp
    epilogue_forward  out = (y + coef v) silu(Z), one pass

and the backward in the reverse order (epilogue, ssd backward, then the preprocessing's
adjoint in a pass over token rows and one backwards in time). Both directions are
``torch.library`` custom ops (``hjseq::mamba3_siso_cpu_fwd`` / ``_bwd``) with fake kernels
and autograd, so ``torch.compile(fullgraph=True)`` traces them. Computed in float32 (float64
for float64 inputs): the other dtypes are cast here, and autograd casts their gradients back.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from .._autograd import backward_can_follow, intermediates_for_backward
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


def _n_seq(Q: Tensor, cu: Tensor, varlen: bool) -> int:
    return cu.shape[0] - 1 if varlen else Q.shape[0]


_EMPTY = (0,)  # the shape of an absent optional result (custom ops return tensors only)


@torch.library.custom_op("hjseq::mamba3_siso_cpu_fwd", mutates_args=(), device_types="cpu")
def _fwd(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor, Q_bias: Tensor,
         K_bias: Tensor, Angles: Tensor, D: Optional[Tensor], Z: Optional[Tensor],
         angle0: Optional[Tensor], S0: Optional[Tensor], k0: Optional[Tensor],
         v0: Optional[Tensor], cu: Tensor, varlen: bool, chunk: int, training: bool
         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                    Tensor, Tensor, Tensor, Tensor]:
    """Contiguous tensors of one float dtype (float32 or float64); D, Z and the four states
    may be None (the states all or none). Returns out (b, l, h, p), φ_T (s, h, a), S_T
    (s, h, p, n), k̃_T (s, h, n), then what the backward reads: q̃, k̃, x, ld, tok, φ, the
    ssd chunk-entry states, and, with ``training`` (else empty), the pre-gate output (when
    Z is given) and every chunk's q̃ k̃ᵀ (nc, h, Q, Q), which the ssd backward would
    otherwise recompute."""
    qt, kt, x, ld, tok, phi, init_t, phi_T, k_T = _ext().prep_forward(
        Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, angle0, S0, k0, v0, cu, varlen)
    if training:
        y, fin_t, st, cb = _ssd_ext().forward_keep_cb(x, ld, kt, qt, init_t, cu, varlen, chunk)
    else:
        y, fin_t, st = _ssd_ext().forward(x, ld, kt, qt, init_t, cu, varlen, chunk)
        cb = V.new_empty(_EMPTY)
    # y becomes the pre-gate output, kept (for dZ) only when training; else the gate is in place
    keep_y = training and Z is not None
    out = _ext().epilogue_forward(y, V, tok, Z, keep_y)
    ypre = y if keep_y else V.new_empty(_EMPTY)
    return (out, phi_T, fin_t.transpose(-1, -2).contiguous(), k_T, qt, kt, x, ld, tok, phi, st,
            ypre, cb)


@_fwd.register_fake
def _(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, angle0, S0, k0, v0, cu, varlen,
      chunk, training):
    from ..ssd.cpu import _n_chunks_alloc

    b, L, _, n = Q.shape
    h, p, a = V.shape[2], V.shape[3], Angles.shape[-1]
    s = _n_seq(Q, cu, varlen)
    nc = _n_chunks_alloc(b, L, s, varlen, chunk)
    return (torch.empty_like(V), V.new_empty(s, h, a), V.new_empty(s, h, p, n),
            V.new_empty(s, h, n), V.new_empty(b, L, h, n), V.new_empty(b, L, h, n),
            torch.empty_like(V), V.new_empty(b, L, h), V.new_empty(4, b, L, h),
            torch.empty_like(Angles), V.new_empty(nc, h, n, p),
            torch.empty_like(V) if training and Z is not None else V.new_empty(_EMPTY),
            V.new_empty(nc, h, chunk, chunk) if training else V.new_empty(_EMPTY))


@torch.library.custom_op("hjseq::mamba3_siso_cpu_bwd", mutates_args=(), device_types="cpu")
def _bwd(dout: Tensor, dphi_T: Optional[Tensor], dS_T: Optional[Tensor],
         dk_T: Optional[Tensor], Q: Tensor, K: Tensor, V: Tensor, DT: Tensor, Trap: Tensor,
         Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, Z: Optional[Tensor],
         S0: Optional[Tensor], k0: Optional[Tensor], v0: Optional[Tensor], qt: Tensor,
         kt: Tensor, x: Tensor, ld: Tensor, tok: Tensor, phi: Tensor, st: Tensor, ypre: Tensor,
         cb: Tensor, cu: Tensor, varlen: bool, chunk: int, has_D: bool) -> list[Tensor]:
    """Gradients of Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, angle0, S0, k0, v0
    (empty where the argument is absent). dout contiguous in V's dtype; the others as given."""
    dfin_t = None if dS_T is None else dS_T.transpose(-1, -2).contiguous()
    dy, dZ, dcoef = _ext().epilogue_backward(dout, ypre if Z is not None else None, V, tok, Z)
    dx, dld, dkt, dqt, dinit_t = _ssd_ext().backward(dy, dfin_t, x, ld, kt, qt, st, cu,
                                                     varlen, chunk, cb if cb.numel() else None)
    # dV is written over dy when dy is ours (with Z; without Z it is dout itself)
    dV = dy if Z is not None else torch.empty_like(V)
    (dQ, dK, dADT, dDT, dTrap, dQb, dKb, dAng, dD, dang0, dS0, dk0,
     dv0) = _ext().prep_backward(dx, dld, dkt, dqt, dinit_t, dphi_T, dk_T, dy, dcoef, dV, Q,
                                 K, V, DT, Trap, Q_bias, K_bias, Angles, S0, k0, v0, tok, phi,
                                 cu, varlen, has_D)
    e = lambda t: V.new_empty(_EMPTY) if t is None else t  # noqa: E731  (outputs never alias)
    return [dQ, dK, dV, dADT, dDT, dTrap, dQb, dKb, dAng, e(dD), e(dZ),
            *(e(t if S0 is not None else None) for t in (dang0, dS0, dk0, dv0))]


@_bwd.register_fake
def _(dout, dphi_T, dS_T, dk_T, Q, K, V, DT, Trap, Q_bias, K_bias, Angles, Z, S0, k0, v0, qt,
      kt, x, ld, tok, phi, st, ypre, cb, cu, varlen, chunk, has_D):
    h, a = V.shape[2], Angles.shape[-1]
    s = _n_seq(Q, cu, varlen)
    e = lambda: V.new_empty(_EMPTY)  # noqa: E731
    st_ = S0 is not None
    return [torch.empty_like(Q), torch.empty_like(K), torch.empty_like(V),
            torch.empty_like(DT), torch.empty_like(DT), torch.empty_like(DT),
            torch.empty_like(Q_bias), torch.empty_like(K_bias), torch.empty_like(Angles),
            V.new_empty(h) if has_D else e(), e() if Z is None else torch.empty_like(Z),
            V.new_empty(s, h, a) if st_ else e(), torch.empty_like(S0) if st_ else e(),
            torch.empty_like(k0) if st_ else e(), torch.empty_like(v0) if st_ else e()]


def _setup(ctx, inputs, output) -> None:
    (Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, angle0, S0, k0, v0, cu, varlen,
     chunk, training) = inputs
    ctx.save_for_backward(Q, K, V, DT, Trap, Q_bias, K_bias, Angles, Z, S0, k0, v0, *output[4:],
                          cu)
    ctx.flags = (varlen, chunk, D is not None, Z is not None, S0 is not None)
    intermediates_for_backward(ctx, *output[4:])


def _backward(ctx, dout, dphi_T, dS_T, dk_T, *_unused):
    (Q, K, V, DT, Trap, Q_bias, K_bias, Angles, Z, S0, k0, v0, qt, kt, x, ld, tok, phi, st,
     ypre, cb, cu) = ctx.saved_tensors
    varlen, chunk, has_D, has_Z, has_states = ctx.flags
    c = lambda g: None if g is None else g.to(V.dtype).contiguous()  # noqa: E731
    dout = torch.zeros_like(V) if dout is None else c(dout)
    g = _bwd(dout, c(dphi_T), c(dS_T), c(dk_T), Q, K, V, DT, Trap, Q_bias, K_bias, Angles, Z,
             S0, k0, v0, qt, kt, x, ld, tok, phi, st, ypre, cb, cu, varlen, chunk, has_D)
    opt = lambda t, present: t if present else None  # noqa: E731
    return (*g[:9], opt(g[9], has_D), opt(g[10], has_Z),
            *(opt(t, has_states) for t in g[11:15]), None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup)


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
    args = (Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, *states)
    # what only the backward reads is kept only when a gradient can be asked for
    training = backward_can_follow(*args)
    out, phi_T, S_T, k_T, *_ = _fwd(*(c(X) for X in args), cu, varlen, int(chunk_size),
                                    training)
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
