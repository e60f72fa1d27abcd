"""Triton backend of ``ssd_scan`` (definition: ref.py), chunked, forward and backward.

The same three phases as the CPU kernel (csrc/cpu/ssd.cpp), each a Triton kernel over a
table of chunks (a chunk never straddles a packed-sequence start):

1. per (chunk, head, block of p): the chunk's own state ``Xᵀ diag(de) B`` (stored (n, p));
2. per (sequence, head, block of the state): the states entering each chunk, passed
   sequentially (``S_in ← dtot·S_in + S_loc``); the backward runs the same kernel over the
   chunks in reverse order for the adjoint states (a loop, no reversed scan);
3. per (chunk, head, block of p): ``Y = (L ∘ C Bᵀ) X + diag(ds) C S_inᵀ``.

Within a chunk, with ``c_t`` the cumulative log-decay and ``k_t`` the number of resets
(−inf) up to t: ``L[t][s] = exp(c_t − c_s)`` when s ≤ t and k_s = k_t, else 0;
``ds_t = exp(c_t)`` while k_t = 0; ``de_s = L[T−1][s]``; ``dtot = ds_{T−1}``.

The backward kernel (per (chunk, head)) returns dX, d log_decay and per-head dB, dC,
summed over the heads of a group afterwards. d log_decay_r collects every term whose
decay spans token r (pairs s < r ≤ t of the intra-chunk matrix, the inter-chunk input and
output decays) with forward cumulative sums only. Arithmetic in float32 (float64 for
float64 inputs; inputs are cast here), ``tl.dot`` at IEEE precision, 64-bit offsets.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._dtypes import accumulation_dtype
from .._registry import BackendUnavailable
from .._triton_common import tl, triton, unavailable_reason

if triton is not None:

    @triton.jit
    def _decays(ld_ptr, row0, H, hh, tlen, BT: tl.constexpr):
        """Per-chunk decays: L (BT, BT), ds, de (BT,), dtot (scalar)."""
        t = tl.arange(0, BT).to(tl.int64)
        valid = t < tlen
        ldv = tl.load(ld_ptr + (row0 + t) * H + hh, mask=valid, other=0.0)
        reset = (ldv == float("-inf")) & valid
        ldf = tl.where(reset, 0.0, ldv)
        cum = tl.cumsum(ldf, 0)
        seg = tl.cumsum(reset.to(tl.int32), 0)
        same = ((seg[:, None] == seg[None, :]) & (t[:, None] >= t[None, :])
                & valid[:, None] & valid[None, :])
        Lm = tl.exp(tl.where(same, cum[:, None] - cum[None, :], float("-inf")))
        cum_last = tl.sum(ldf, 0)
        seg_last = tl.sum(reset.to(tl.int32), 0)
        ds = tl.exp(tl.where((seg == 0) & valid, cum, float("-inf")))
        de = tl.exp(tl.where((seg == seg_last) & valid, cum_last - cum, float("-inf")))
        dtot = tl.exp(tl.where(seg_last == 0, cum_last, float("-inf")))
        return Lm, ds, de, dtot

    @triton.jit
    def _chunk_info(cb_ptr, ct0_ptr, clen_ptr, c, L):
        bi = tl.load(cb_ptr + c).to(tl.int64)
        t0 = tl.load(ct0_ptr + c).to(tl.int64)
        tlen = tl.load(clen_ptr + c).to(tl.int64)
        return bi * L + t0, tlen

    @triton.jit
    def _local_state_kernel(x_ptr, ld_ptr, w_ptr, st_ptr, dtot_ptr, cb_ptr, ct0_ptr, clen_ptr,
                            L, H, G, P, N, HPG, USE_DS: tl.constexpr, BT: tl.constexpr,
                            BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
        """st[c, h] (n, p) = Wᵀ diag(dec) X: forward W = B, dec = de, X = x; backward
        (USE_DS) W = C, dec = ds, X = dy."""
        c = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1).to(tl.int64)
        pb = tl.program_id(2).to(tl.int64)
        row0, tlen = _chunk_info(cb_ptr, ct0_ptr, clen_ptr, c, L)
        gg = hh // HPG
        t = tl.arange(0, BT).to(tl.int64)
        j = pb * BP + tl.arange(0, BP).to(tl.int64)
        k = tl.arange(0, BN).to(tl.int64)
        valid = t < tlen
        _, ds, de, dtot = _decays(ld_ptr, row0, H, hh, tlen, BT)
        X = tl.load(x_ptr + ((row0 + t) * H + hh)[:, None] * P + j[None, :],
                    mask=valid[:, None] & (j < P)[None, :], other=0.0)
        W = tl.load(w_ptr + ((row0 + t) * G + gg)[:, None] * N + k[None, :],
                    mask=valid[:, None] & (k < N)[None, :], other=0.0)
        dec = ds if USE_DS else de
        S = tl.dot(tl.trans(W * dec[:, None]), X, input_precision=PREC)
        tl.store(st_ptr + (c * H + hh) * N * P + k[:, None] * P + j[None, :], S,
                 mask=(k < N)[:, None] & (j < P)[None, :])
        if pb == 0:
            tl.store(dtot_ptr + c * H + hh, dtot)

    @triton.jit
    def _pass_kernel(st_ptr, dtot_ptr, first_ptr, init_ptr, fin_ptr, H, NP,
                     HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, BLK: tl.constexpr):
        """Per (sequence, head): turn each chunk's local state into the carried state
        entering it (in place), from ``init``; the state after the last is ``fin``. REVERSE
        walks the chunks last to first (the adjoint pass of the backward)."""
        s = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1).to(tl.int64)
        i = tl.program_id(2).to(tl.int64) * BLK + tl.arange(0, BLK).to(tl.int64)
        m = i < NP
        c0 = tl.load(first_ptr + s).to(tl.int64)
        c1 = tl.load(first_ptr + s + 1).to(tl.int64)
        if HAS_INIT:
            carry = tl.load(init_ptr + (s * H + hh) * NP + i, mask=m, other=0.0)
        else:
            carry = tl.zeros((BLK,), dtype=st_ptr.dtype.element_ty)
        for q in range(0, c1 - c0):
            if REVERSE:
                c = c1 - 1 - q
            else:
                c = c0 + q
            off = (c * H + hh) * NP + i
            loc = tl.load(st_ptr + off, mask=m, other=0.0)
            tl.store(st_ptr + off, carry, mask=m)
            a = tl.load(dtot_ptr + c * H + hh)
            carry = a * carry + loc
        tl.store(fin_ptr + (s * H + hh) * NP + i, carry, mask=m)

    @triton.jit
    def _output_kernel(x_ptr, ld_ptr, b_ptr, c_ptr, st_ptr, y_ptr, cb_ptr, ct0_ptr, clen_ptr,
                       L, H, G, P, N, HPG, BT: tl.constexpr, BP: tl.constexpr,
                       BN: tl.constexpr, PREC: tl.constexpr):
        """y = (L ∘ C Bᵀ) X + diag(ds) C S_inᵀ for one (chunk, head, block of p)."""
        c = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1).to(tl.int64)
        pb = tl.program_id(2).to(tl.int64)
        row0, tlen = _chunk_info(cb_ptr, ct0_ptr, clen_ptr, c, L)
        gg = hh // HPG
        t = tl.arange(0, BT).to(tl.int64)
        j = pb * BP + tl.arange(0, BP).to(tl.int64)
        k = tl.arange(0, BN).to(tl.int64)
        valid = t < tlen
        Lm, ds, _, _ = _decays(ld_ptr, row0, H, hh, tlen, BT)
        tk = valid[:, None] & (k < N)[None, :]
        Cm = tl.load(c_ptr + ((row0 + t) * G + gg)[:, None] * N + k[None, :], mask=tk, other=0.0)
        Bm = tl.load(b_ptr + ((row0 + t) * G + gg)[:, None] * N + k[None, :], mask=tk, other=0.0)
        tj = valid[:, None] & (j < P)[None, :]
        X = tl.load(x_ptr + ((row0 + t) * H + hh)[:, None] * P + j[None, :], mask=tj, other=0.0)
        SiT = tl.load(st_ptr + (c * H + hh) * N * P + k[:, None] * P + j[None, :],
                      mask=(k < N)[:, None] & (j < P)[None, :], other=0.0)
        M = Lm * tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
        Y = tl.dot(M, X, input_precision=PREC)
        Y += ds[:, None] * tl.dot(Cm, SiT, input_precision=PREC)
        tl.store(y_ptr + ((row0 + t) * H + hh)[:, None] * P + j[None, :], Y, mask=tj)

    @triton.jit
    def _backward_kernel(x_ptr, ld_ptr, b_ptr, c_ptr, st_ptr, dso_ptr, dy_ptr, dx_ptr, dld_ptr,
                         dbh_ptr, dch_ptr, cb_ptr, ct0_ptr, clen_ptr, L, H, G, P, N, HPG,
                         BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                         PREC: tl.constexpr):
        """Gradients of one (chunk, head): dx, d log_decay, and this head's dB, dC."""
        c = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1).to(tl.int64)
        row0, tlen = _chunk_info(cb_ptr, ct0_ptr, clen_ptr, c, L)
        gg = hh // HPG
        t = tl.arange(0, BT).to(tl.int64)
        j = tl.arange(0, BP).to(tl.int64)
        k = tl.arange(0, BN).to(tl.int64)
        valid = t < tlen
        Lm, ds, de, dtot = _decays(ld_ptr, row0, H, hh, tlen, BT)
        tk = valid[:, None] & (k < N)[None, :]
        tj = valid[:, None] & (j < P)[None, :]
        kj = (k < N)[:, None] & (j < P)[None, :]
        Cm = tl.load(c_ptr + ((row0 + t) * G + gg)[:, None] * N + k[None, :], mask=tk, other=0.0)
        Bm = tl.load(b_ptr + ((row0 + t) * G + gg)[:, None] * N + k[None, :], mask=tk, other=0.0)
        xo = ((row0 + t) * H + hh)[:, None] * P + j[None, :]
        X = tl.load(x_ptr + xo, mask=tj, other=0.0)
        dY = tl.load(dy_ptr + xo, mask=tj, other=0.0)
        so = (c * H + hh) * N * P + k[:, None] * P + j[None, :]
        SiT = tl.load(st_ptr + so, mask=kj, other=0.0)
        SoT = tl.load(dso_ptr + so, mask=kj, other=0.0)
        M = Lm * tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
        dM = tl.dot(dY, tl.trans(X), input_precision=PREC)
        dX = tl.dot(tl.trans(M), dY, input_precision=PREC)
        dX += de[:, None] * tl.dot(Bm, SoT, input_precision=PREC)
        dG = Lm * dM
        XSo = de[:, None] * tl.dot(X, tl.trans(SoT), input_precision=PREC)
        dYSi = ds[:, None] * tl.dot(dY, tl.trans(SiT), input_precision=PREC)
        dBh = tl.dot(tl.trans(dG), Cm, input_precision=PREC) + XSo
        dCh = tl.dot(dG, Bm, input_precision=PREC) + dYSi
        w = tl.sum(XSo * Bm, 1)
        v = tl.sum(dYSi * Cm, 1)
        u0 = dtot * tl.sum(tl.sum(SoT * SiT, 1), 0)
        # pairs s < r <= t of the intra-chunk matrix: exclusive prefix over s, then t >= r
        W = M * dM
        before = tl.cumsum(W, 1) - W
        R = tl.sum(tl.where(t[:, None] >= t[None, :], before, 0.0), 0)
        dld = R + (tl.sum(v, 0) - tl.cumsum(v, 0) + v) + u0 + (tl.cumsum(w, 0) - w)
        tl.store(dx_ptr + xo, dX, mask=tj)
        tl.store(dld_ptr + (row0 + t) * H + hh, dld, mask=valid)
        ho = ((row0 + t) * H + hh)[:, None] * N + k[None, :]
        tl.store(dbh_ptr + ho, dBh, mask=tk)
        tl.store(dch_ptr + ho, dCh, mask=tk)


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def _plan(batch: int, L: int, cu_seqlens: Tensor | None, Q: int, device: torch.device):
    """Chunk table (batch row, start, length) and each sequence's first chunk."""
    seqs = ([(b, 0, L) for b in range(batch)] if cu_seqlens is None else
            [(0, lo, hi) for lo, hi in zip(cu_seqlens.tolist(), cu_seqlens.tolist()[1:])])
    rows, first = [], [0]
    for b, lo, hi in seqs:
        rows += [(b, t0, min(Q, hi - t0)) for t0 in range(lo, hi, Q)]
        first.append(len(rows))
    tab = torch.tensor(rows or [(0, 0, 0)], dtype=torch.int64, device=device)
    return (tab[:, 0].contiguous(), tab[:, 1].contiguous(), tab[:, 2].contiguous(),
            torch.tensor(first, dtype=torch.int64, device=device), len(rows))


#: tl.dot precision: IEEE (no TF32 rounding), as the tolerances of the tests assume
PREC = "ieee"


def _passes(st: Tensor, dtot: Tensor, first: Tensor, init: Tensor | None, nseq: int,
            reverse: bool) -> Tensor:
    H, N, P = st.shape[1:]
    fin = st.new_empty(nseq, H, N, P)
    BLK = min(1024, _pow2(N * P))
    grid = (nseq, H, triton.cdiv(N * P, BLK))
    _pass_kernel[grid](st, dtot, first, init if init is not None else st, fin, H, N * P,
                       HAS_INIT=init is not None, REVERSE=reverse, BLK=BLK)
    return fin


class _SSDScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ld, B, C, init_t, cu_seqlens, Q):
        batch, L, H, P = x.shape
        G, N = B.shape[2:]
        cb, ct0, clen, first, nc = _plan(batch, L, cu_seqlens, Q, x.device)
        nseq = first.numel() - 1
        st = x.new_empty(max(nc, 1), H, N, P)
        dtot = x.new_empty(max(nc, 1), H)
        BT, BN, BP = _pow2(Q), _pow2(N), min(64, _pow2(P))
        y = torch.empty_like(x)
        if nc:
            grid = (nc, H, triton.cdiv(P, BP))
            _local_state_kernel[grid](x, ld, B, st, dtot, cb, ct0, clen, L, H, G, P, N, H // G,
                                      USE_DS=False, BT=BT, BP=BP, BN=BN, PREC=PREC)
        fin = _passes(st, dtot, first, init_t, nseq, reverse=False)
        if nc:
            _output_kernel[grid](x, ld, B, C, st, y, cb, ct0, clen, L, H, G, P, N, H // G,
                                 BT=BT, BP=BP, BN=BN, PREC=PREC)
        ctx.save_for_backward(x, ld, B, C, st, cb, ct0, clen, first)
        ctx.meta = (Q, nc, init_t is not None)
        return y, fin

    @staticmethod
    def backward(ctx, dy, dfin):
        x, ld, B, C, st, cb, ct0, clen, first = ctx.saved_tensors
        Q, nc, has_init = ctx.meta
        batch, L, H, P = x.shape
        G, N = B.shape[2:]
        nseq = first.numel() - 1
        dy = torch.zeros_like(x) if dy is None else dy.to(x.dtype).contiguous()
        dfin = None if dfin is None else dfin.to(x.dtype).contiguous()
        dso = torch.empty_like(st)
        dtot = x.new_empty(st.shape[:2])
        BT, BN = _pow2(Q), _pow2(N)
        dx, dld = torch.zeros_like(x), torch.zeros_like(ld)
        dBh = x.new_zeros(batch, L, H, N)
        dCh = x.new_zeros(batch, L, H, N)
        if nc:
            BP = min(64, _pow2(P))
            _local_state_kernel[(nc, H, triton.cdiv(P, BP))](
                dy, ld, C, dso, dtot, cb, ct0, clen, L, H, G, P, N, H // G, USE_DS=True,
                BT=BT, BP=BP, BN=BN, PREC=PREC)
        dinit = _passes(dso, dtot, first, dfin, nseq, reverse=True)
        if nc:
            _backward_kernel[(nc, H)](x, ld, B, C, st, dso, dy, dx, dld, dBh, dCh, cb, ct0, clen,
                                      L, H, G, P, N, H // G, BT=BT, BP=_pow2(P), BN=BN,
                                      PREC=PREC)
        dB = dBh.view(batch, L, G, H // G, N).sum(3)
        dC = dCh.view(batch, L, G, H // G, N).sum(3)
        return dx, dld, dB, dC, (dinit if has_init else None), None, None


def ssd_scan_triton(x: Tensor, log_decay: Tensor, B: Tensor, C: Tensor,
                    initial_states: Tensor | None = None, cu_seqlens: Tensor | None = None,
                    return_final_states: bool = False, chunk_size: int = 64):
    """Chunked Triton SSD scan; arguments, shapes and result as ``ref.ssd_scan_ref``.
    Inputs are assumed validated (``checks.py``)."""
    acc = accumulation_dtype(x.dtype)
    init_t = (None if initial_states is None
              else initial_states.to(acc).transpose(-1, -2).contiguous())
    y, fin_t = _SSDScan.apply(x.to(acc).contiguous(), log_decay.to(acc).contiguous(),
                              B.to(acc).contiguous(), C.to(acc).contiguous(), init_t,
                              cu_seqlens, int(chunk_size))
    y = y.to(x.dtype)
    return (y, fin_t.transpose(-1, -2).contiguous()) if return_final_states else y


def load() -> Callable:
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)
    return ssd_scan_triton
