"""Triton backend of ``causal_conv1d`` (forward and backward), see ref.py for the definition.

Forward, per (BLOCK_D, T) tile: ``pre_t = bias + Σ_k w_k x̃_{t−(W−1)+k}``, ``y = act(pre)``,
where x̃ reads x inside the sequence and ``initial_state`` (or 0) before its start. Packed
sequences (``cu_seqlens``) use a per-position sequence index, as causal-conv1d does.

Backward, fused in one kernel (plus a small one for the initial state's gradient): with
``dpre = dy ⊙ act'(pre)``, pre and the SiLU derivative recomputed in-kernel from x̃, w and
bias at each tile's targets (no pre/dpre buffer; ~3 full-size passes: x, dy read, dx
written)::

    dx_t    = Σ_k w_k dpre_{t+(W−1)−k}   (targets inside t's sequence) + d(final)[tail of t]
    dw_k    = Σ_t dpre_t x̃_{t−(W−1)+k},        dbias = Σ_t dpre_t
    dh0_j   = Σ_k w_k dpre_{bos+j−k}  (bos ≤ target < eos) + d(final) for history still in the tail
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._registry import BackendUnavailable
from .._dtypes import accumulation_dtype
from .._triton_common import tl, tl_dtype, triton, unavailable_reason
from . import _validate  # the dispatcher's argument checks

OP = "causal_conv1d"

if triton is not None:

    @triton.jit
    def _bounds(cu_ptr, seq_ptr, b, t, tmask, L, VARLEN: tl.constexpr):
        """Sequence index, start and end for each position t (scalars when not packed)."""
        if VARLEN:
            seq = tl.load(seq_ptr + t, mask=tmask, other=0).to(tl.int64)
            bos = tl.load(cu_ptr + seq, mask=tmask, other=0).to(tl.int64)
            eos = tl.load(cu_ptr + seq + 1, mask=tmask, other=0).to(tl.int64)
        else:
            seq = b
            bos = b * 0
            eos = b * 0 + L
        return seq, bos, eos

    @triton.jit
    def _x_tilde(x_ptr, h0_ptr, xb_off, d, s_xd, s_xl, seq, s_hs, s_hd, s_hw, tp, bos, m2,
                 W: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr):
        """x̃ at positions tp (BLOCK_D, T): x inside the sequence, initial_state before it."""
        inside = tp >= bos
        xv = tl.load(x_ptr + xb_off + d[:, None] * s_xd + tp * s_xl, mask=m2 & inside,
                     other=0.0).to(ACC)
        if HAS_H0:
            j = tp - bos + (W - 1)
            xv += tl.load(h0_ptr + seq * s_hs + d[:, None] * s_hd + j * s_hw,
                          mask=m2 & (tp < bos), other=0.0).to(ACC)
        return xv

    @triton.jit
    def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, h0_ptr, seq_ptr, cu_ptr, out_ptr,
                         D, L, s_xb, s_xd, s_xl, s_ob, s_od, s_ol, s_wd, s_wk, s_hs, s_hd, s_hw,
                         W: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
                         HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, VARLEN: tl.constexpr,
                         SILU: tl.constexpr, ACC: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        t = tl.program_id(2).to(tl.int64) * T + tl.arange(0, T)
        dmask = d < D
        tmask = t < L
        m2 = dmask[:, None] & tmask[None, :]
        seq, bos, eos = _bounds(cu_ptr, seq_ptr, b, t, tmask, L, VARLEN)
        if VARLEN:
            seq = seq[None, :]
            bos = bos[None, :]
        acc = tl.zeros((BLOCK_D, T), dtype=ACC)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)[:, None]
        for k in tl.static_range(W):
            tp = t[None, :] - (W - 1) + k
            xv = _x_tilde(x_ptr, h0_ptr, b * s_xb, d, s_xd, s_xl, seq, s_hs, s_hd, s_hw, tp, bos,
                          m2, W, HAS_H0, ACC)
            wk = tl.load(w_ptr + d * s_wd + k * s_wk, mask=dmask, other=0.0).to(ACC)
            acc += wk[:, None] * xv
        if SILU:
            acc = acc * tl.sigmoid(acc)
        tl.store(out_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol, acc, mask=m2)

    @triton.jit
    def _conv_final_kernel(x_ptr, h0_ptr, cu_ptr, fin_ptr, D, L, s_xb, s_xd, s_xl,
                           s_hs, s_hd, s_hw, W: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_W: tl.constexpr, HAS_H0: tl.constexpr, VARLEN: tl.constexpr,
                           ACC: tl.constexpr):
        """final[s, :, j] = x̃ at position eos − (W−1) + j (the last W−1 inputs)."""
        s = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        j = tl.arange(0, BLOCK_W)
        if VARLEN:
            bos = tl.load(cu_ptr + s)
            eos = tl.load(cu_ptr + s + 1)
            b = 0
        else:
            bos = 0
            eos = L
            b = s
        m2 = (d < D)[:, None] & (j < W - 1)[None, :]
        tp = eos - (W - 1) + j[None, :]
        xv = _x_tilde(x_ptr, h0_ptr, b * s_xb, d, s_xd, s_xl, s, s_hs, s_hd, s_hw, tp, bos, m2,
                      W, HAS_H0, ACC)
        tl.store(fin_ptr + s * s_hs + d[:, None] * s_hd + j[None, :] * s_hw, xv, mask=m2)

    @triton.jit
    def _dpre(x_ptr, w_ptr, bias_ptr, h0_ptr, dy_ptr, xb_off, dyb_off, d, dmask, tau, ok, seq,
              bos, s_xd, s_xl, s_wd, s_wk, s_hs, s_hd, s_hw, s_gd, s_gl,
              W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
              SILU: tl.constexpr, ACC: tl.constexpr):
        """dpre = dy ⊙ act'(pre) at target positions ``tau`` (BLOCK_D, X) of the sequence
        starting at ``bos``, recomputing pre from x̃ and w; 0 where ``ok`` is False."""
        m2 = dmask[:, None] & ok
        g = tl.load(dy_ptr + dyb_off + d[:, None] * s_gd + tau * s_gl, mask=m2, other=0.0).to(ACC)
        if SILU:
            pre = tl.zeros(g.shape, dtype=ACC)
            if HAS_BIAS:
                pre += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)[:, None]
            for j in tl.static_range(W):
                wj = tl.load(w_ptr + d * s_wd + j * s_wk, mask=dmask, other=0.0).to(ACC)
                pre += wj[:, None] * _x_tilde(x_ptr, h0_ptr, xb_off, d, s_xd, s_xl, seq, s_hs,
                                              s_hd, s_hw, tau - (W - 1) + j, bos, m2, W, HAS_H0,
                                              ACC)
            sg = tl.sigmoid(pre)
            g = g * sg * (1.0 + pre * (1.0 - sg))
        return tl.where(m2, g, 0.0)

    @triton.jit
    def _conv_bwd_kernel(x_ptr, w_ptr, bias_ptr, h0_ptr, seq_ptr, cu_ptr, dy_ptr, dfin_ptr,
                         dx_ptr, dwb_ptr, D, L, n_t,
                         s_xb, s_xd, s_xl, s_wd, s_wk, s_hs, s_hd, s_hw, s_gb, s_gd, s_gl,
                         s_ob, s_od, s_ol,
                         W: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
                         HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, VARLEN: tl.constexpr,
                         SILU: tl.constexpr, ACC: tl.constexpr):
        """Fused backward on a (BLOCK_D, T) tile of source positions t: dpre at the targets
        t..t+W−1 is recomputed here (pre and SiLU from x̃, w, bias), giving dx_t; the tile's
        own targets give its share of dw and dbias, stored as partials (B·n_t, D, W+1)."""
        b = tl.program_id(0).to(tl.int64)
        pid_t = tl.program_id(2).to(tl.int64)
        d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        t = pid_t * T + tl.arange(0, T)
        dmask = d < D
        tmask = t < L
        m2 = dmask[:, None] & tmask[None, :]
        seq, bos, eos = _bounds(cu_ptr, seq_ptr, b, t, tmask, L, VARLEN)
        if VARLEN:
            seq = seq[None, :]
            bos = bos[None, :]
            eos = eos[None, :]
        xb_off = b * s_xb
        dyb_off = b * s_gb
        dx = tl.zeros((BLOCK_D, T), dtype=ACC)
        part = dwb_ptr + (b * n_t + pid_t) * D * (W + 1) + d * (W + 1)
        for k in tl.static_range(W):
            # source t feeds target t + (W−1) − k of its own sequence
            tgt = t[None, :] + (W - 1) - k
            dp = _dpre(x_ptr, w_ptr, bias_ptr, h0_ptr, dy_ptr, xb_off, dyb_off, d, dmask, tgt,
                       tmask[None, :] & (tgt < eos), seq, bos, s_xd, s_xl, s_wd, s_wk, s_hs,
                       s_hd, s_hw, s_gd, s_gl, W, HAS_BIAS, HAS_H0, SILU, ACC)
            wk = tl.load(w_ptr + d * s_wd + k * s_wk, mask=dmask, other=0.0).to(ACC)
            dx += wk[:, None] * dp
            if k == W - 1:  # the tile's own targets (tgt = t): dw_j and dbias
                for j in tl.static_range(W):
                    xv = _x_tilde(x_ptr, h0_ptr, xb_off, d, s_xd, s_xl, seq, s_hs, s_hd, s_hw,
                                  t[None, :] - (W - 1) + j, bos, m2, W, HAS_H0, ACC)
                    tl.store(part + j, tl.sum(dp * xv, axis=1), mask=dmask)
                tl.store(part + W, tl.sum(dp, axis=1), mask=dmask)
        # the returned final state holds the last W−1 inputs of each sequence
        e = t[None, :] - (eos - (W - 1))
        in_tail = m2 & (e >= 0)
        dx += tl.load(dfin_ptr + seq * s_hs + d[:, None] * s_hd + e * s_hw, mask=in_tail,
                      other=0.0).to(ACC)
        tl.store(dx_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol, dx, mask=m2)

    @triton.jit
    def _conv_dh0_kernel(x_ptr, w_ptr, bias_ptr, h0_ptr, cu_ptr, dy_ptr, dfin_ptr, dh0_ptr,
                         D, L, s_xb, s_xd, s_xl, s_wd, s_wk, s_hs, s_hd, s_hw, s_gb, s_gd, s_gl,
                         W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr,
                         HAS_BIAS: tl.constexpr, VARLEN: tl.constexpr, SILU: tl.constexpr,
                         ACC: tl.constexpr):
        """Gradient of initial_state[s, :, j] (x̃ history position j = 0..W−2), with dpre at
        the first targets of the sequence recomputed as in the backward kernel."""
        s = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        j = tl.arange(0, BLOCK_W)
        if VARLEN:
            bos = tl.load(cu_ptr + s).to(tl.int64)
            eos = tl.load(cu_ptr + s + 1).to(tl.int64)
            b = s * 0
        else:
            bos = s * 0
            eos = s * 0 + L
            b = s
        dmask = d < D
        m2 = dmask[:, None] & (j < W - 1)[None, :]
        g = tl.zeros((BLOCK_D, BLOCK_W), dtype=ACC)
        for k in tl.static_range(W):
            wk = tl.load(w_ptr + d * s_wd + k * s_wk, mask=dmask, other=0.0).to(ACC)
            tgt = bos + j[None, :] - k
            ok = (j < W - 1)[None, :] & (tgt >= bos) & (tgt < eos)
            g += wk[:, None] * _dpre(x_ptr, w_ptr, bias_ptr, h0_ptr, dy_ptr, b * s_xb, b * s_gb, d,
                                     dmask, tgt, ok, s, bos, s_xd, s_xl, s_wd, s_wk, s_hs, s_hd,
                                     s_hw, s_gd, s_gl, W, HAS_BIAS, True, SILU, ACC)
        jt = j[None, :] - (eos - bos)  # history still among the last W−1 inputs
        g += tl.load(dfin_ptr + s * s_hs + d[:, None] * s_hd + jt * s_hw, mask=m2 & (jt >= 0),
                     other=0.0).to(ACC)
        tl.store(dh0_ptr + s * s_hs + d[:, None] * s_hd + j[None, :] * s_hw, g, mask=m2)


def _config(length: int, dim: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_D, T): on CUDA 2K-element tiles along contiguous L (untuned: no GPU measured)."""
    t = min(128 if device.type == "cuda" else 64, triton.next_power_of_2(max(length, 1)))
    return min(triton.next_power_of_2(dim), max(1, 2048 // t)), t


def _seq_index(cu_seqlens: Tensor, length: int) -> Tensor:
    """Sequence number of every packed position, (L,) int32, without a host sync."""
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    idx = torch.arange(lens.numel(), device=cu_seqlens.device, dtype=torch.int32)
    return torch.repeat_interleave(idx, lens, output_size=length)


class _Launch:
    def __init__(self, x: Tensor, weight: Tensor, cu_seqlens: Tensor | None):
        self.batch, self.dim, self.L = x.shape
        self.W = weight.shape[1]
        self.block_d, self.T = _config(self.L, self.dim, x.device)
        self.block_w = triton.next_power_of_2(max(self.W - 1, 1))
        self.n_seq = self.batch if cu_seqlens is None else cu_seqlens.numel() - 1
        self.n_t = triton.cdiv(self.L, self.T) if self.L > 0 else 0
        self.acc = accumulation_dtype(x.dtype)
        self.varlen = cu_seqlens is not None
        self.seq = _seq_index(cu_seqlens, self.L) if self.varlen else None
        self.cu = cu_seqlens

    def conv(self, x, weight, bias, h0, silu: bool, out: Tensor) -> None:
        if self.n_t == 0:
            return
        hs = h0 if h0 is not None else out  # placeholder pointer when absent
        _conv_fwd_kernel[(self.batch, triton.cdiv(self.dim, self.block_d), self.n_t)](
            x, weight, bias if bias is not None else weight, hs,
            self.seq if self.varlen else x, self.cu if self.varlen else x, out,
            self.dim, self.L, *x.stride(), *out.stride(), *weight.stride(),
            *(h0.stride() if h0 is not None else (0, 0, 0)),
            W=self.W, BLOCK_D=self.block_d, T=self.T, HAS_BIAS=bias is not None,
            HAS_H0=h0 is not None, VARLEN=self.varlen, SILU=silu, ACC=tl_dtype(self.acc))


class _CausalConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu, h0, cu_seqlens):
        run = _Launch(x, weight, cu_seqlens)
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        run.conv(x, weight, bias, h0, silu, out)
        fin = torch.empty(run.n_seq, run.dim, run.W - 1, device=x.device, dtype=x.dtype)
        if run.W > 1:
            _conv_final_kernel[(run.n_seq, triton.cdiv(run.dim, run.block_d))](
                x, h0 if h0 is not None else fin, cu_seqlens if run.varlen else x, fin,
                run.dim, run.L, *x.stride(), *fin.stride(), W=run.W, BLOCK_D=run.block_d,
                BLOCK_W=run.block_w, HAS_H0=h0 is not None, VARLEN=run.varlen,
                ACC=tl_dtype(run.acc))
        ctx.save_for_backward(x, weight, bias, h0, cu_seqlens)
        ctx.silu = silu
        return out, fin

    @staticmethod
    def backward(ctx, dy, dfin):
        x, weight, bias, h0, cu_seqlens = ctx.saved_tensors
        run = _Launch(x, weight, cu_seqlens)
        dev = x.device
        dy = dy if dy is not None else torch.zeros_like(x)
        fin_shape = (run.n_seq, run.dim, run.W - 1)
        dfin = (dfin.contiguous() if dfin is not None
                else torch.zeros(fin_shape, device=dev, dtype=x.dtype))
        dx = torch.empty(x.shape, device=dev, dtype=x.dtype)
        # per-tile partial sums of dw (W columns) and dbias (the last column)
        dwb = torch.empty(run.batch * max(run.n_t, 1), run.dim, run.W + 1, device=dev,
                          dtype=run.acc)
        dh0 = torch.zeros(fin_shape, device=dev, dtype=run.acc)
        hs = h0 if h0 is not None else dh0
        bias_ = bias if bias is not None else weight
        if run.n_t > 0:
            _conv_bwd_kernel[(run.batch, triton.cdiv(run.dim, run.block_d), run.n_t)](
                x, weight, bias_, hs, run.seq if run.varlen else x,
                cu_seqlens if run.varlen else x, dy, dfin, dx, dwb, run.dim, run.L, run.n_t,
                *x.stride(), *weight.stride(), *hs.stride(), *dy.stride(), *dx.stride(),
                W=run.W, BLOCK_D=run.block_d, T=run.T, HAS_BIAS=bias is not None,
                HAS_H0=h0 is not None, VARLEN=run.varlen, SILU=ctx.silu, ACC=tl_dtype(run.acc),
                num_warps=8)  # W recomputed pre tiles live at once: 4 warps spill (ptxas)
        else:
            dwb.zero_()
        if h0 is not None and run.W > 1:
            _conv_dh0_kernel[(run.n_seq, triton.cdiv(run.dim, run.block_d))](
                x, weight, bias_, h0, cu_seqlens if run.varlen else x, dy, dfin, dh0, run.dim,
                run.L, *x.stride(), *weight.stride(), *dh0.stride(), *dy.stride(), W=run.W,
                BLOCK_D=run.block_d, BLOCK_W=run.block_w, HAS_BIAS=bias is not None,
                VARLEN=run.varlen, SILU=ctx.silu, ACC=tl_dtype(run.acc))
        sums = dwb.sum(0)
        dw = sums[:, :run.W].to(weight.dtype)
        dbias = sums[:, run.W].to(bias.dtype) if bias is not None else None
        return (dx, dw, dbias, None, dh0.to(h0.dtype) if h0 is not None else None, None)


def causal_conv1d_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None, initial_state: Tensor | None = None,
                         return_final_state: bool = False, cu_seqlens: Tensor | None = None):
    """Triton depthwise causal conv; x (B, D, L), weight (D, W), bias (D,), initial_state
    (B, D, W−1) (or (S, D, W−1) with ``cu_seqlens`` (S+1,)). Returns y (B, D, L) in x's
    dtype and, on request, the final state (B|S, D, W−1) in x's dtype."""
    _validate(x, weight, bias, activation, initial_state, cu_seqlens)
    if initial_state is not None:
        initial_state = initial_state.contiguous()  # read with the final state's layout
    y, fin = _CausalConvFn.apply(x, weight, bias, activation is not None, initial_state,
                                 cu_seqlens)
    return (y, fin) if return_final_state else y


def load() -> Callable:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    return causal_conv1d_triton
