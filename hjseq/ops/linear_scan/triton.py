"""Triton backend of ``linear_scan``: ``h_t = a_t ⊙ h_{t-1} + b_t`` over (B, D, L), see ref.py.

One program owns (sequence, BLOCK_D channels) and walks L in tiles of T steps; each tile
is a ``tl.associative_scan`` seeded with the carried state. Arithmetic in float32
(float64 for float64 inputs). The forward saves the state entering each tile
((slots, D), one slot per T steps); the backward recomputes each tile's states from it and
runs the co-state recurrence ``g_t = dh_t + a_{t+1} g_{t+1}`` as a forward scan over the
tile loaded in reversed time order (flipped back bit-exactly; no ``reverse=True`` scan):

    db_t = g_t,      da_t = g_t h_{t-1},      d(initial_state) = a_0 g_0.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._registry import BackendUnavailable
from .._dtypes import accumulation_dtype
from .._triton_common import (flip_time, int_dtype, log2_exact, pick_tile, scan_combine,
                              tile_offsets, tl, tl_dtype, triton, unavailable_reason)
from . import _validate  # the dispatcher's argument checks

OP = "linear_scan"

if triton is not None:

    @triton.jit
    def _seq_bounds(cu_ptr, pid_s, L, VARLEN: tl.constexpr):
        if VARLEN:
            bos = tl.load(cu_ptr + pid_s).to(tl.int64)
            eos = tl.load(cu_ptr + pid_s + 1).to(tl.int64)
        else:
            bos = pid_s.to(tl.int64) * 0
            eos = pid_s.to(tl.int64) * 0 + L
        return bos, eos

    @triton.jit
    def _lin_fwd_kernel(a_ptr, b_ptr, h0_ptr, out_ptr, states_ptr, hT_ptr, cu_ptr, slot_ptr,
                        L, D, s_ab, s_ad, s_al, s_bb, s_bd, s_bl, s_ob, s_od, s_ol,
                        BLOCK_D: tl.constexpr, T: tl.constexpr, HAS_H0: tl.constexpr,
                        VARLEN: tl.constexpr, SAVE_STATES: tl.constexpr, ACC: tl.constexpr,
                        NUM_STAGES: tl.constexpr):
        pid_s = tl.program_id(0).to(tl.int64)  # 64-bit: every offset below is int64
        d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = d < D
        bos, eos = _seq_bounds(cu_ptr, pid_s, L, VARLEN)
        bb = 0 if VARLEN else pid_s  # batch row of the (B, D, L) tensors
        if HAS_H0:
            h = tl.load(h0_ptr + pid_s * D + d, mask=dmask, other=0.0).to(ACC)
        else:
            h = tl.zeros((BLOCK_D,), dtype=ACC)
        slot0 = tl.load(slot_ptr + pid_s).to(tl.int64)
        tt = tl.arange(0, T).to(tl.int64)
        for k in tl.range(0, tl.cdiv(eos - bos, T), num_stages=NUM_STAGES):
            if SAVE_STATES:
                tl.store(states_ptr + (slot0 + k) * D + d, h, mask=dmask)
            t = bos + k * T + tt
            m2 = dmask[:, None] & (t < eos)[None, :]
            a = tl.load(a_ptr + bb * s_ab + d[:, None] * s_ad + t[None, :] * s_al, mask=m2,
                        other=1.0).to(ACC)
            b = tl.load(b_ptr + bb * s_bb + d[:, None] * s_bd + t[None, :] * s_bl, mask=m2,
                        other=0.0).to(ACC)
            a_cum, h_loc = tl.associative_scan((a, b), 1, scan_combine)
            # the carry uses the tile's total map only (one FMA, off the outputs' path)
            last = tt[None, :] == T - 1
            a_tot = tl.sum(tl.where(last, a_cum, 0.0), axis=1)
            b_tot = tl.sum(tl.where(last, h_loc, 0.0), axis=1)
            hs = h_loc + a_cum * h[:, None]
            tl.store(out_ptr + bb * s_ob + d[:, None] * s_od + t[None, :] * s_ol, hs, mask=m2)
            h = a_tot * h + b_tot
        tl.store(hT_ptr + pid_s * D + d, h, mask=dmask)

    @triton.jit
    def _lin_bwd_kernel(a_ptr, b_ptr, dout_ptr, dhT_ptr, states_ptr, cu_ptr, slot_ptr,
                        da_ptr, db_ptr, dh0_ptr,
                        L, D, s_ab, s_ad, s_al, s_bb, s_bd, s_bl, s_ob, s_od, s_ol,
                        s_gb, s_gd, s_gl,
                        BLOCK_D: tl.constexpr, T: tl.constexpr, VARLEN: tl.constexpr,
                        ACC: tl.constexpr, LOG2_T: tl.constexpr, IDT: tl.constexpr,
                        NUM_STAGES: tl.constexpr):
        pid_s = tl.program_id(0).to(tl.int64)  # 64-bit: every offset below is int64
        d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = d < D
        bos, eos = _seq_bounds(cu_ptr, pid_s, L, VARLEN)
        bb = 0 if VARLEN else pid_s
        P = tl.load(dhT_ptr + pid_s * D + d, mask=dmask, other=0.0).to(ACC)  # a_{t1} g_{t1}
        slot0 = tl.load(slot_ptr + pid_s).to(tl.int64)
        tt = tl.arange(0, T).to(tl.int64)
        n_tiles = tl.cdiv(eos - bos, T)
        for kk in tl.range(0, n_tiles, num_stages=NUM_STAGES):
            k = n_tiles - 1 - kk
            h_in = tl.load(states_ptr + (slot0 + k) * D + d, mask=dmask, other=0.0)
            t = bos + k * T + tt
            tmask = t < eos
            m2 = dmask[:, None] & tmask[None, :]
            a_off = bb * s_ab + d[:, None] * s_ad
            b_off = bb * s_bb + d[:, None] * s_bd
            # h_{t-1}: scan of the inputs shifted by one, with the entering state injected
            # at the tile's first step (a' = 0 there)
            first = (tt == 0)[None, :]
            mp = dmask[:, None] & (tt > 0)[None, :] & tmask[None, :]
            a_prev = tl.load(a_ptr + a_off + (t[None, :] - 1) * s_al, mask=mp, other=0.0).to(ACC)
            b_prev = tl.load(b_ptr + b_off + (t[None, :] - 1) * s_bl, mask=mp, other=0.0).to(ACC)
            b_prev = tl.where(first, h_in[:, None], b_prev)
            _, h_prev = tl.associative_scan((a_prev, b_prev), 1, scan_combine)
            # g_t = dh_t + a_{t+1} g_{t+1} within the tile (the next tile enters through P):
            # a forward scan over the tile loaded in reversed time order, flipped back
            tr = bos + k * T + (T - 1 - tt)
            mr = dmask[:, None] & (tr < eos)[None, :]
            mn = dmask[:, None] & ((tt > 0) & (tr + 1 < eos))[None, :]
            a_next = tl.load(a_ptr + a_off + (tr[None, :] + 1) * s_al, mask=mn, other=1.0).to(ACC)
            a_next = tl.where(mn, a_next, 1.0)
            dh = tl.load(dout_ptr + bb * s_gb + d[:, None] * s_gd + tr[None, :] * s_gl, mask=mr,
                         other=0.0).to(ACC)
            g_cum, g_loc = tl.associative_scan((a_next, dh), 1, scan_combine)
            g = flip_time(g_loc + g_cum * P[:, None], 1, LOG2_T, IDT)
            g = tl.where(m2, g, 0.0)
            a = tl.load(a_ptr + a_off + t[None, :] * s_al, mask=m2, other=0.0).to(ACC)
            # carry a_{t0} g_{t0} from the tile totals (slot T-1 holds step 0): one FMA on P
            first_r = tt[None, :] == T - 1
            a0 = tl.sum(tl.where(tt[None, :] == 0, a, 0.0), axis=1)
            gc0 = tl.sum(tl.where(first_r, g_cum, 0.0), axis=1)
            gl0 = tl.sum(tl.where(first_r, g_loc, 0.0), axis=1)
            out_off = bb * s_ob + d[:, None] * s_od + t[None, :] * s_ol
            tl.store(db_ptr + out_off, g, mask=m2)
            tl.store(da_ptr + out_off, g * h_prev, mask=m2)
            P = a0 * (gl0 + gc0 * P)
        tl.store(dh0_ptr + pid_s * D + d, P, mask=dmask)


def _config(length: int, dim: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_D, T, num_warps); on CUDA ~2K elements per tile (untuned: no GPU measured)."""
    if device.type == "cuda":
        t = pick_tile(length, cap=128)
        return min(triton.next_power_of_2(dim), max(1, 2048 // t)), t, 4
    return min(triton.next_power_of_2(dim), 16), pick_tile(length, cap=64), 1


def _stages(device: torch.device) -> int:
    """Software-pipelining depth of the tile loops (prefetch the next tile on CUDA)."""
    return 2 if device.type == "cuda" else 1


class _LinearScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, cu_seqlens):
        batch, dim, L = b.shape
        block_d, T, warps = _config(L, dim, b.device)
        n_seq = batch if cu_seqlens is None else cu_seqlens.numel() - 1
        acc = accumulation_dtype(b.dtype)
        slots, n_slots = tile_offsets(cu_seqlens, batch, L, T, b.device)
        need_grad = any(ctx.needs_input_grad)
        out = torch.empty(b.shape, device=b.device, dtype=b.dtype)
        hT = torch.empty(n_seq, dim, device=b.device, dtype=acc)
        states = torch.empty(n_slots, dim, device=b.device, dtype=acc) if need_grad else hT
        grid = (n_seq, triton.cdiv(dim, block_d))
        _lin_fwd_kernel[grid](
            a, b, h0 if h0 is not None else hT, out, states, hT,
            cu_seqlens if cu_seqlens is not None else slots, slots, L, dim,
            *a.stride(), *b.stride(), *out.stride(),
            BLOCK_D=block_d, T=T, HAS_H0=h0 is not None, VARLEN=cu_seqlens is not None,
            SAVE_STATES=need_grad, ACC=tl_dtype(acc), NUM_STAGES=_stages(b.device),
            num_warps=warps)
        ctx.save_for_backward(a, b, h0, cu_seqlens, states if need_grad else None, slots)
        ctx.cfg = (block_d, T, warps, n_seq, acc)
        return out, hT

    @staticmethod
    def backward(ctx, dout, dhT):
        a, b, h0, cu_seqlens, states, slots = ctx.saved_tensors
        block_d, T, warps, n_seq, acc = ctx.cfg
        batch, dim, L = b.shape
        da = torch.empty(b.shape, device=b.device, dtype=a.dtype)
        db = torch.empty(b.shape, device=b.device, dtype=b.dtype)
        dh0 = torch.empty(n_seq, dim, device=b.device, dtype=acc)
        dhT = dhT.contiguous() if dhT is not None else torch.zeros_like(dh0)
        dout = dout if dout is not None else torch.zeros_like(b)
        grid = (n_seq, triton.cdiv(dim, block_d))
        _lin_bwd_kernel[grid](
            a, b, dout, dhT, states, cu_seqlens if cu_seqlens is not None else slots, slots,
            da, db, dh0, L, dim, *a.stride(), *b.stride(), *da.stride(), *dout.stride(),
            BLOCK_D=block_d, T=T, VARLEN=cu_seqlens is not None, ACC=tl_dtype(acc),
            LOG2_T=log2_exact(T), IDT=int_dtype(acc), NUM_STAGES=_stages(b.device),
            num_warps=warps)
        return da, db, (dh0.to(h0.dtype) if h0 is not None else None), None


def linear_scan_triton(a: Tensor, b: Tensor, initial_state: Tensor | None = None,
                       return_final_state: bool = False, cu_seqlens: Tensor | None = None):
    """Triton ``h_t = a_t h_{t-1} + b_t``; a, b (B, D, L), initial_state (B, D) (or (S, D)
    with ``cu_seqlens`` (S+1,)). Returns h (B, D, L) in b's dtype and, on request, the
    float32/float64 final state (B, D) / (S, D)."""
    _validate(a, b, initial_state, cu_seqlens)
    if initial_state is not None:
        initial_state = initial_state.contiguous()  # read with the (S, D) state layout
    h, hT = _LinearScanFn.apply(a, b, initial_state, cu_seqlens)
    return (h, hT) if return_final_state else h


def load() -> Callable:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    return linear_scan_triton
