"""Triton backend of ``selective_scan`` (forward and backward), see ref.py for the definition.

One program owns ``(sequence s, group g, a block of BLOCK_D channels of g)`` with all N
state entries, and walks the sequence in tiles of T steps. Inside a tile the recurrence
``h_t = Ā_t h_{t-1} + B̄_t u_t`` is a parallel ``tl.associative_scan`` over the
(BLOCK_D, T, N) tile, seeded with the carry from the previous tile:
``h_t = (Π_{s≤t} Ā_s) h_{t0-1} + scan(Ā, B̄u)_t``. All arithmetic is float32 (float64 for
float64 inputs) whatever the input dtype.

Memory: the forward saves only the state entering each tile, (slots, D, N) with one slot
per T steps -- never (B, D, L, N). The backward walks the tiles in reverse, recomputes the
tile's states from its saved entry, and runs the adjoint (co-state) recurrence
``g_t = C_t dy_t + Ā_{t+1} g_{t+1}`` as a forward scan over the tile loaded in reversed
time order (flipped back bit-exactly, never a ``reverse=True`` scan), carrying ``Ā_{t0} g_{t0}``
(the gradient of the state entering the tile) to the previous tile.

Gradients, with ``β_t = s_t B_t u_t`` (``s = Δ`` for euler_b, ``s = expm1(ΔA)/A`` for zoh)::

    dC_t = Σ_d dy_t h_t          dB_t = Σ_d g_t s_t u_t        du_t = D dy_t + Σ_n g_t s_t B_t
    dΔ_t = Σ_n [ g_t (h_t − β_t) A + g_t B_t u_t ∂s/∂Δ ]       (g_t (h_t − β_t) = g_t Ā_t h_{t−1})
    dA   = Σ_t [ g_t (h_t − β_t) Δ_t + g_t B_t u_t ∂s/∂A ]     dh_{init} = Ā_0 g_0

dB and dC sum over the channels of a group across programs (atomic adds into float32/64
buffers); dA, dD and d(delta_bias) are reduced per sequence in the kernel and over
sequences in torch.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import Tensor

from .._registry import BackendUnavailable
from ._groups import as4d, from4d, n_groups
from .checks import validate
from .._dtypes import accumulation_dtype
from .._triton_common import (flip_time, int_dtype, log2_exact, pick_tile, scan_combine,
                              tile_offsets, tl, tl_dtype, triton, unavailable_reason)

OP = "selective_scan"

if triton is not None:

    @triton.jit
    def _expm1_over_x(x):
        """``expm1(x)/x`` (→ 1 at x = 0), accurate for small |x| where exp(x) − 1 cancels."""
        small = tl.abs(x) < 0.1
        # Σ_k x^k/(k+1)!, truncation error < 1e-17 for |x| < 0.1
        series = 1.0 + x * (1 / 2 + x * (1 / 6 + x * (1 / 24 + x * (1 / 120 + x * (1 / 720 + x * (
            1 / 5040 + x * (1 / 40320 + x * (1 / 362880 + x / 3628800))))))))
        safe = tl.where(small, 1.0, x)
        return tl.where(small, series, (tl.exp(safe) - 1.0) / safe)

    @triton.jit
    def _dexpm1_over_x(x):
        """``d/dx [expm1(x)/x] = (x eˣ − expm1(x))/x²`` (→ 1/2 at x = 0), by series near 0."""
        small = tl.abs(x) < 0.1
        # Σ_{k≥2} (k−1) x^(k−2)/k!, truncation error < 1e-17 for |x| < 0.1
        series = 1 / 2 + x * (1 / 3 + x * (1 / 8 + x * (1 / 30 + x * (1 / 144 + x * (1 / 840 + x * (
            1 / 5760 + x * (1 / 45360 + x * (1 / 403200 + x / 3991680))))))))
        safe = tl.where(small, 1.0, x)
        return tl.where(small, series, (safe * tl.exp(safe) - (tl.exp(safe) - 1.0)) / (safe * safe))

    @triton.jit
    def _softplus(x):
        """``log(1 + eˣ)`` as torch computes it (identity above 20), with log1p accuracy."""
        e = tl.exp(tl.minimum(x, 20.0))
        w = 1.0 + e
        lp = tl.where(w == 1.0, e, tl.log(w) * e / tl.where(w == 1.0, 1.0, w - 1.0))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _dsoftplus(x):
        """Derivative of :func:`_softplus`: sigmoid(x), exactly 1 above 20 as in torch."""
        return tl.where(x > 20.0, 1.0, tl.sigmoid(x))

    @triton.jit
    def _load_tile(ptr, b, s_b, d, s_d, t, s_l, mask, ACC: tl.constexpr):
        """(BLOCK_D, T) tile of a (B, D, L) tensor, as ACC."""
        return tl.load(ptr + b * s_b + d[:, None] * s_d + t[None, :] * s_l, mask=mask,
                       other=0.0).to(ACC)

    @triton.jit
    def _step_factors(delta, A, A2, ZOH: tl.constexpr):
        """Ā = exp(ΔA) = exp2(Δ·A2) (A2 = A log2 e) and the B-scale s (Δ or expm1(ΔA)/A) on
        the (BLOCK_D, T, N) tile."""
        dA = delta[:, :, None] * A[:, None, :]
        a = tl.exp2(delta[:, :, None] * A2[:, None, :])
        if ZOH:
            s = delta[:, :, None] * _expm1_over_x(dA)
        else:
            s = delta[:, :, None] + tl.zeros_like(dA)
        return a, s, dA

    @triton.jit
    def _ssm_fwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dv_ptr, z_ptr, bias_ptr, h0_ptr,
            out_ptr, states_ptr, hT_ptr, cu_ptr, slot_ptr, aux_ptr,
            L, DG, N, TPS, N_SPLIT, L_BUCKET,
            s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_ob, s_od, s_ol,
            s_Ad, s_An, s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
            s_hs, s_hd, s_hn,
            BLOCK_D: tl.constexpr, T: tl.constexpr, BLOCK_N: tl.constexpr,
            HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
            SOFTPLUS: tl.constexpr, ZOH: tl.constexpr, HAS_H0: tl.constexpr,
            VARLEN: tl.constexpr, SAVE_STATES: tl.constexpr, ACC: tl.constexpr,
            NUM_STAGES: tl.constexpr, MODE: tl.constexpr):
        """MODE 0: the whole sequence. With the sequence split in N_SPLIT runs of TPS tiles
        (program axis 2 = channel block x run): MODE 1 stores each run's total map
        (Π Ā, state reached from 0) in aux (rows of 2 states); MODE 2 runs from the entering
        state in aux (composed on the host) and writes outputs and tile states."""
        pid_s = tl.program_id(0).to(tl.int64)  # 64-bit: every offset below is int64
        pid_g = tl.program_id(1).to(tl.int64)
        pid_d = tl.program_id(2).to(tl.int64) // N_SPLIT
        split = tl.program_id(2).to(tl.int64) % N_SPLIT
        if VARLEN:
            bos = tl.load(cu_ptr + pid_s).to(tl.int64)
            eos = tl.load(cu_ptr + pid_s + 1).to(tl.int64)
            b = 0
        else:
            bos = pid_s * 0
            eos = pid_s * 0 + L
            b = pid_s
        dl = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = dl < DG
        d = pid_g * DG + dl
        n = tl.arange(0, BLOCK_N).to(tl.int64)
        nmask = n < N
        dn_mask = dmask[:, None] & nmask[None, :]
        A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=dn_mask, other=0.0).to(ACC)
        A2 = A * 1.4426950408889634  # log2 e: exp(ΔA) = exp2(Δ A2)
        if HAS_D:
            Dv = tl.load(Dv_ptr + d, mask=dmask, other=0.0).to(ACC)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)
        hs_off = d[:, None] * s_hd + n[None, :] * s_hn
        run = pid_s * N_SPLIT + split
        if MODE == 2:
            h = tl.load(aux_ptr + run * s_hs + hs_off, mask=dn_mask, other=0.0)
        elif HAS_H0 and MODE == 0:
            h = tl.load(h0_ptr + pid_s * s_hs + hs_off, mask=dn_mask, other=0.0).to(ACC)
        else:
            h = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
        tot_a = tl.full((BLOCK_D, BLOCK_N), 1.0, dtype=ACC)
        slot0 = tl.load(slot_ptr + pid_s).to(tl.int64)
        B_base = B_ptr + b * s_Bb + pid_g * s_Bg
        C_base = C_ptr + b * s_Cb + pid_g * s_Cg
        tt = tl.arange(0, T).to(tl.int64)
        n_tiles = tl.cdiv(eos - bos, T)
        k_lo = split * TPS
        k_hi = tl.minimum(n_tiles, k_lo + TPS)
        for k in tl.range(k_lo, k_hi, num_stages=NUM_STAGES):
            if SAVE_STATES and MODE != 1:
                tl.store(states_ptr + (slot0 + k) * s_hs + hs_off, h, mask=dn_mask)
            t = bos + k * T + tt
            tmask = t < eos
            m2 = dmask[:, None] & tmask[None, :]
            u = _load_tile(u_ptr, b, s_ub, d, s_ud, t, s_ul, m2, ACC)
            delta = _load_tile(delta_ptr, b, s_db, d, s_dd, t, s_dl, m2, ACC)
            if HAS_BIAS:
                delta = delta + bias[:, None]
            if SOFTPLUS:
                delta = _softplus(delta)
            tn_mask = tmask[:, None] & nmask[None, :]
            Bt = tl.load(B_base + n[None, :] * s_Bn + t[:, None] * s_Bl, mask=tn_mask,
                         other=0.0).to(ACC)
            Ct = tl.load(C_base + n[None, :] * s_Cn + t[:, None] * s_Cl, mask=tn_mask,
                         other=0.0).to(ACC)
            a, s, _ = _step_factors(delta, A, A2, ZOH)
            m3 = tmask[None, :, None]
            a = tl.where(m3, a, 1.0)  # padded steps leave the state unchanged
            beta = tl.where(m3, s * Bt[None, :, :] * u[:, :, None], 0.0)
            a_cum, h_loc = tl.associative_scan((a, beta), 1, scan_combine)
            # the tile's total map (Π Ā, scan of B̄u at its last step) does not depend on the
            # entering state: the carry between tiles is one FMA, off the outputs' path
            last = tt[None, :, None] == T - 1
            a_tot = tl.sum(tl.where(last, a_cum, 0.0), axis=1)
            b_tot = tl.sum(tl.where(last, h_loc, 0.0), axis=1)
            if MODE != 1:
                hs = h_loc + a_cum * h[:, None, :]
                y = tl.sum(hs * Ct[None, :, :], axis=2)
                if HAS_D:
                    y += u * Dv[:, None]
                if HAS_Z:
                    zt = _load_tile(z_ptr, b, s_zb, d, s_zd, t, s_zl, m2, ACC)
                    y = y * zt * tl.sigmoid(zt)
                tl.store(out_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol, y, mask=m2)
            else:
                tot_a = a_tot * tot_a
            h = a_tot * h + b_tot
        if MODE == 0:
            tl.store(hT_ptr + pid_s * s_hs + hs_off, h, mask=dn_mask)
        if MODE == 1:
            tl.store(aux_ptr + (2 * run) * s_hs + hs_off, tot_a, mask=dn_mask)
            tl.store(aux_ptr + (2 * run + 1) * s_hs + hs_off, h, mask=dn_mask)

    @triton.jit
    def _costate_scan(delta_ptr, dout_ptr, z_ptr, C_base, b, d, dmask, n, nmask, A2, bias, tr,
                      tt, eos, s_db, s_dd, s_dl, s_gb, s_gd, s_gl, s_zb, s_zd, s_zl, s_Cn, s_Cl,
                      HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
                      ACC: tl.constexpr):
        """The co-state g_t = C_t dy_t + Ā_{t+1} g_{t+1} over one tile, as a forward scan over
        the tile loaded in reversed time order (slot j holds step tr_j = T-1-j of the tile):
        returns (g_cum, g_loc) with g = g_loc + g_cum · P (P: what enters from the next tile)."""
        trmask = tr < eos
        mr = dmask[:, None] & trmask[None, :]
        nmr = dmask[:, None] & ((tt > 0) & (tr + 1 < eos))[None, :]  # Ā_{t+1} in the tile
        dn = _load_tile(delta_ptr, b, s_db, d, s_dd, tr + 1, s_dl, nmr, ACC)
        if HAS_BIAS:
            dn = dn + bias[:, None]
        if SOFTPLUS:
            dn = _softplus(dn)
        a_next_r = tl.where(nmr[:, :, None], tl.exp2(dn[:, :, None] * A2[:, None, :]), 1.0)
        dy_r = _load_tile(dout_ptr, b, s_gb, d, s_gd, tr, s_gl, mr, ACC)
        if HAS_Z:
            zr = _load_tile(z_ptr, b, s_zb, d, s_zd, tr, s_zl, mr, ACC)
            dy_r = dy_r * zr * tl.sigmoid(zr)
        Cr = tl.load(C_base + n[None, :] * s_Cn + tr[:, None] * s_Cl,
                     mask=trmask[:, None] & nmask[None, :], other=0.0).to(ACC)
        return tl.associative_scan((a_next_r, dy_r[:, :, None] * Cr[None, :, :]), 1,
                                   scan_combine)

    @triton.jit
    def _ssm_bwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dv_ptr, z_ptr, bias_ptr,
            dout_ptr, dhT_ptr, states_ptr, cu_ptr, slot_ptr,
            du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
            aux_ptr, L, DG, N, D_total, TPS, N_SPLIT, L_BUCKET,
            s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_ob, s_od, s_ol,
            s_Ad, s_An, s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
            s_hs, s_hd, s_hn,
            s_gb, s_gd, s_gl, s_dBb, s_dBg, s_dBn, s_dBl,
            BLOCK_D: tl.constexpr, T: tl.constexpr, BLOCK_N: tl.constexpr,
            HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
            SOFTPLUS: tl.constexpr, ZOH: tl.constexpr, HAS_DHT: tl.constexpr,
            VARLEN: tl.constexpr, ACC: tl.constexpr, LOG2_T: tl.constexpr, IDT: tl.constexpr,
            NUM_STAGES: tl.constexpr, MODE: tl.constexpr):
        """MODE 0: the whole sequence. Split in N_SPLIT runs of TPS tiles: MODE 1 stores each
        run's map P_in -> P_out of the carried co-state (rows (a, b) in aux); MODE 2 runs
        from the P entering it (aux, composed on the host), with per-run dA/dD/dbias rows."""
        pid_s = tl.program_id(0).to(tl.int64)  # 64-bit: every offset below is int64
        pid_g = tl.program_id(1).to(tl.int64)
        pid_d = tl.program_id(2).to(tl.int64) // N_SPLIT
        split = tl.program_id(2).to(tl.int64) % N_SPLIT
        run = pid_s * N_SPLIT + split
        if VARLEN:
            bos = tl.load(cu_ptr + pid_s).to(tl.int64)
            eos = tl.load(cu_ptr + pid_s + 1).to(tl.int64)
            b = 0
        else:
            bos = pid_s * 0
            eos = pid_s * 0 + L
            b = pid_s
        dl = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = dl < DG
        d = pid_g * DG + dl
        n = tl.arange(0, BLOCK_N).to(tl.int64)
        nmask = n < N
        dn_mask = dmask[:, None] & nmask[None, :]
        A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=dn_mask, other=0.0).to(ACC)
        A2 = A * 1.4426950408889634  # log2 e: exp(ΔA) = exp2(Δ A2)
        if HAS_D:
            Dv = tl.load(Dv_ptr + d, mask=dmask, other=0.0).to(ACC)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)
        else:
            bias = tl.zeros((BLOCK_D,), dtype=ACC)
        hs_off = d[:, None] * s_hd + n[None, :] * s_hn
        # P = gradient of the state entering the tile after the current one (Ā_{t1} g_{t1});
        # for the last tile it is the gradient of the returned final state.
        if MODE == 2:
            P = tl.load(aux_ptr + run * s_hs + hs_off, mask=dn_mask, other=0.0)
        elif HAS_DHT and MODE == 0:
            P = tl.load(dhT_ptr + pid_s * s_hs + hs_off, mask=dn_mask, other=0.0).to(ACC)
        else:
            P = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
        map_a = tl.full((BLOCK_D, BLOCK_N), 1.0, dtype=ACC)  # MODE 1: P_out = map_a P_in + P
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
        dD_acc = tl.zeros((BLOCK_D,), dtype=ACC)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=ACC)
        slot0 = tl.load(slot_ptr + pid_s).to(tl.int64)
        B_base = B_ptr + b * s_Bb + pid_g * s_Bg
        C_base = C_ptr + b * s_Cb + pid_g * s_Cg
        dB_base = dB_ptr + b * s_dBb + pid_g * s_dBg
        dC_base = dC_ptr + b * s_dBb + pid_g * s_dBg
        tt = tl.arange(0, T).to(tl.int64)
        n_tiles = tl.cdiv(eos - bos, T)
        k_lo = split * TPS
        k_hi = tl.minimum(n_tiles, k_lo + TPS)
        for kk in tl.range(k_lo, k_hi, num_stages=NUM_STAGES):
            k = k_hi - 1 - (kk - k_lo)
            tr = bos + k * T + (T - 1 - tt)
            g_cum, g_loc = _costate_scan(delta_ptr, dout_ptr, z_ptr, C_base, b, d, dmask, n,
                                         nmask, A2, bias, tr, tt, eos, s_db, s_dd, s_dl, s_gb,
                                         s_gd, s_gl, s_zb, s_zd, s_zl, s_Cn, s_Cl, HAS_BIAS,
                                         SOFTPLUS, HAS_Z, ACC)
            # the carry to the previous tile, Ā_{t0} g_{t0}, from the tile totals (slot T-1
            # holds step 0): one FMA on P, not a reduction over the flipped co-state
            first_r = tt[None, :, None] == T - 1
            gc0 = tl.sum(tl.where(first_r, g_cum, 0.0), axis=1)
            gl0 = tl.sum(tl.where(first_r, g_loc, 0.0), axis=1)
            if MODE == 1:
                d0 = tl.load(delta_ptr + b * s_db + d * s_dd + (bos + k * T) * s_dl, mask=dmask,
                             other=0.0).to(ACC) + bias
                if SOFTPLUS:
                    d0 = _softplus(d0)
                a0 = tl.exp2(d0[:, None] * A2)
                map_a = a0 * gc0 * map_a
                P = a0 * (gl0 + gc0 * P)
            else:
                h0 = tl.load(states_ptr + (slot0 + k) * s_hs + hs_off, mask=dn_mask, other=0.0)
                t = bos + k * T + tt
                tmask = t < eos
                m2 = dmask[:, None] & tmask[None, :]
                u = _load_tile(u_ptr, b, s_ub, d, s_ud, t, s_ul, m2, ACC)
                dpre = _load_tile(delta_ptr, b, s_db, d, s_dd, t, s_dl, m2, ACC)
                if HAS_BIAS:
                    dpre = dpre + bias[:, None]
                if SOFTPLUS:
                    delta = _softplus(dpre)
                else:
                    delta = dpre
                tn_mask = tmask[:, None] & nmask[None, :]
                Bt = tl.load(B_base + n[None, :] * s_Bn + t[:, None] * s_Bl, mask=tn_mask,
                             other=0.0).to(ACC)
                Ct = tl.load(C_base + n[None, :] * s_Cn + t[:, None] * s_Cl, mask=tn_mask,
                             other=0.0).to(ACC)
                a, s, dA_t = _step_factors(delta, A, A2, ZOH)
                m3 = tmask[None, :, None]
                a = tl.where(m3, a, 1.0)
                Bu = Bt[None, :, :] * u[:, :, None]
                beta = tl.where(m3, s * Bu, 0.0)
                a_cum, h_loc = tl.associative_scan((a, beta), 1, scan_combine)
                hs = h_loc + a_cum * h0[:, None, :]
                dout = _load_tile(dout_ptr, b, s_gb, d, s_gd, t, s_gl, m2, ACC)
                if HAS_Z:
                    zt = _load_tile(z_ptr, b, s_zb, d, s_zd, t, s_zl, m2, ACC)
                    y = tl.sum(hs * Ct[None, :, :], axis=2)
                    if HAS_D:
                        y += u * Dv[:, None]
                    sz = tl.sigmoid(zt)
                    dz = dout * y * sz * (1.0 + zt * (1.0 - sz))
                    tl.store(dz_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol, dz, mask=m2)
                    dy = dout * zt * sz
                else:
                    dy = dout
                if HAS_D:
                    dD_acc += tl.sum(dy * u, axis=1)
                    du = dy * Dv[:, None]
                else:
                    du = tl.zeros_like(dy)
                a0 = tl.sum(tl.where(tt[None, :, None] == 0, a, 0.0), axis=1)
                g = flip_time(g_loc + g_cum * P[:, None, :], 1, LOG2_T, IDT)
                g = tl.where(m3, g, 0.0)
                # dC_t = Σ_d dy h_t, dB_t = Σ_d g s u: summed over this program's channels here,
                # over the group's other channel blocks by the atomics
                tl.atomic_add(dC_base + n[None, :] * s_dBn + t[:, None] * s_dBl,
                              tl.sum(dy[:, :, None] * hs, axis=0), mask=tn_mask)
                gs = g * s
                tl.atomic_add(dB_base + n[None, :] * s_dBn + t[:, None] * s_dBl,
                              tl.sum(gs * u[:, :, None], axis=0), mask=tn_mask)
                du += tl.sum(gs * Bt[None, :, :], axis=2)
                gh = g * (hs - beta)  # = g_t Ā_t h_{t-1}
                gBu = g * Bu
                ddelta = tl.sum(gh * A[:, None, :], axis=2)
                dA_acc += tl.sum(gh * delta[:, :, None], axis=1)
                if ZOH:
                    ddelta += tl.sum(gBu * a, axis=2)  # ∂s/∂Δ = exp(ΔA)
                    dA_acc += tl.sum(gBu * delta[:, :, None] * delta[:, :, None]
                                     * _dexpm1_over_x(dA_t), axis=1)
                else:
                    ddelta += tl.sum(gBu, axis=2)
                if SOFTPLUS:
                    ddelta = ddelta * _dsoftplus(dpre)
                ddelta = tl.where(m2, ddelta, 0.0)
                dbias_acc += tl.sum(ddelta, axis=1)
                tl.store(du_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol, du, mask=m2)
                tl.store(ddelta_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol, ddelta,
                         mask=m2)
                P = a0 * (gl0 + gc0 * P)
            # a tile past the end (empty sequence) never runs; P then stays dhT
        if MODE == 0:
            tl.store(dh0_ptr + pid_s * s_hs + hs_off, P, mask=dn_mask)
        if MODE == 1:
            tl.store(aux_ptr + (2 * run) * s_hs + hs_off, map_a, mask=dn_mask)
            tl.store(aux_ptr + (2 * run + 1) * s_hs + hs_off, P, mask=dn_mask)
        else:  # per-run partial sums (run = sequence without a split)
            tl.store(dA_ptr + run * D_total * BLOCK_N + d[:, None] * BLOCK_N + n[None, :],
                     dA_acc, mask=dn_mask)
            tl.store(dD_ptr + run * D_total + d, dD_acc, mask=dmask)
            tl.store(dbias_ptr + run * D_total + d, dbias_acc, mask=dmask)


AUTOTUNE_ENV = "HJSEQ_TRITON_AUTOTUNE"


def _autotune(t: Tensor) -> bool:
    """Autotune BLOCK_D and num_warps on CUDA when ``HJSEQ_TRITON_AUTOTUNE=1``; otherwise
    (the default, until a GPU has timed both) the fixed tiles of :class:`_Meta`. Each new
    key compiles and times up to 8 configs per kernel."""
    return t.device.type == "cuda" and os.environ.get(AUTOTUNE_ENV, "0") == "1"


def _prune(max_elems: int):
    """Keep the candidate configs whose (BLOCK_D, T, BLOCK_N) tile fits ``max_elems`` and
    whose BLOCK_D does not exceed the group's channels (rounded up to a power of two)."""
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        tn = args["T"] * args["BLOCK_N"]
        dg = triton.next_power_of_2(args["DG"])
        keep = [c for c in configs if c.kwargs["BLOCK_D"] <= dg
                and c.kwargs["BLOCK_D"] * tn <= max_elems]
        return keep or [min(configs, key=lambda c: (c.kwargs["BLOCK_D"], c.num_warps))]
    return prune


if triton is not None:
    # T is not tuned: forward and backward share it through the saved tile states. The key
    # is (channels per group, N, L rounded up to a power of two) plus the dtypes; dB/dC,
    # accumulated with atomics, are zeroed before every trial and before the real run.
    _TILE_CONFIGS = [triton.Config({"BLOCK_D": bd}, num_warps=w)
                     for bd in (1, 2, 4, 8) for w in (4, 8)]
    _ssm_fwd_tuned = triton.autotune(
        configs=_TILE_CONFIGS, key=["DG", "N", "L_BUCKET"],
        prune_configs_by={"early_config_prune": _prune(8192)})(_ssm_fwd_kernel)
    _ssm_bwd_tuned = triton.autotune(
        configs=_TILE_CONFIGS, key=["DG", "N", "L_BUCKET"], reset_to_zero=["dB_ptr", "dC_ptr"],
        prune_configs_by={"early_config_prune": _prune(2048)})(_ssm_bwd_kernel)


def _on_gpu(t: Tensor) -> bool:
    """Compiled-GPU launch configuration (else the interpreter's)."""
    return t.device.type == "cuda"


class _Meta:
    """Shapes and launch parameters of the forward and backward launches (they share T,
    the tile of the saved states; BLOCK_D and num_warps may differ).

    On CUDA the time tile is 32 steps for N ≤ 32 and 16 above; the forward's
    (BLOCK_D, T, N) tile holds up to 4K elements over 8 warps, the heavier backward's up to
    1K over 8 warps (2K at N ≥ 128), so that its ~10 live tile-sized values fit in
    registers. ``benchmarks/bench_gpu.py --registers`` prints what ptxas reports for
    these choices at N = 16, 64, 128; no GPU has timed them yet. Tile loops prefetch with
    ``num_stages=2``. Under the interpreter larger tiles mean fewer numpy steps.
    """

    def __init__(self, u: Tensor, A: Tensor, B4: Tensor, cu_seqlens: Tensor | None):
        self.batch, self.dim, self.L = u.shape
        self.N = A.shape[1]
        self.G = B4.shape[1]
        self.DG = self.dim // self.G
        self.block_n = triton.next_power_of_2(self.N)
        self.n_seq = self.batch if cu_seqlens is None else cu_seqlens.numel() - 1
        self.acc = accumulation_dtype(u.dtype)
        dg = triton.next_power_of_2(self.DG)
        if _on_gpu(u):
            self.T = pick_tile(self.L, cap=32 if self.block_n <= 32 else 16)
            tn = self.T * self.block_n
            self.block_d_fwd = max(1, min(dg, 8, 4096 // tn))
            self.block_d_bwd = max(1, min(dg, 4, 1024 // tn))
            self.warps_fwd = 8
            self.warps_bwd = 8
            self.stages = 2
        else:
            self.T = pick_tile(self.L, cap=64)
            self.block_d_fwd = self.block_d_bwd = min(dg, 16)
            self.warps_fwd = self.warps_bwd = 1
            self.stages = 1

    def grid(self, block_d: int, n_split: int = 1) -> tuple[int, int, int]:
        return (self.n_seq, self.G, triton.cdiv(self.DG, block_d) * n_split)

    def max_tiles(self) -> int:
        return max(1, triton.cdiv(self.L, self.T))


def _pick_split(m: _Meta, block_d: int, device: torch.device) -> int:
    """Runs per sequence of the three-pass split over L (1 = a single pass). Only on CUDA
    and only when the (sequence, group, channel block) programs cannot fill the GPU, e.g.
    B = 1, D = 1536: 192 programs walking 512 tiles each. Pass 1 computes each run's total
    map from a zero state, the host composes them (S small steps), pass 2 runs each run
    from its entering state; the runs' inputs are read twice."""
    if device.type != "cuda":
        return 1
    programs = m.n_seq * m.G * triton.cdiv(m.DG, block_d)
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    if programs >= target or m.max_tiles() < 32:
        return 1
    return max(1, min(triton.cdiv(target, programs), m.max_tiles() // 16, 64))


def _forward(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, h0, zoh, cu_seqlens,
             save_states):
    m = _Meta(u, A, B4, cu_seqlens)
    slots, n_slots = tile_offsets(cu_seqlens, m.batch, m.L, m.T, u.device)
    out = torch.empty_like(u)
    hT = torch.empty(m.n_seq, m.dim, m.N, device=u.device, dtype=m.acc)
    states = (torch.empty(n_slots, m.dim, m.N, device=u.device, dtype=m.acc) if save_states
              else hT)
    z_ = z if z is not None else u
    cu = cu_seqlens if cu_seqlens is not None else slots
    n_split = _pick_split(m, m.block_d_fwd, u.device)
    tps = triton.cdiv(m.max_tiles(), n_split)

    def launch(mode: int, aux: Tensor) -> None:
        if _autotune(u):
            kernel = _ssm_fwd_tuned[lambda meta: m.grid(meta["BLOCK_D"], n_split)]
            tiles = {}
        else:
            kernel = _ssm_fwd_kernel[m.grid(m.block_d_fwd, n_split)]
            tiles = dict(BLOCK_D=m.block_d_fwd, num_warps=m.warps_fwd)
        kernel(
            u, delta, A, B4, C4, D if D is not None else u, z_,
            delta_bias if delta_bias is not None else u, h0 if h0 is not None else hT,
            out, states, hT, cu, slots, aux,
            m.L, m.DG, m.N, tps, n_split, triton.next_power_of_2(max(m.L, 1)),
            *u.stride(), *delta.stride(), *z_.stride(), *out.stride(),
            *A.stride(), *B4.stride(), *C4.stride(), *hT.stride(),
            T=m.T, BLOCK_N=m.block_n, HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), ZOH=zoh,
            HAS_H0=h0 is not None, VARLEN=cu_seqlens is not None, SAVE_STATES=save_states,
            ACC=tl_dtype(m.acc), NUM_STAGES=m.stages, MODE=mode, **tiles)

    if n_split == 1:
        launch(0, hT)
        return out, hT, states, slots
    # three passes: run totals, their composition (h ↦ Π Ā h + b per run), outputs
    tot = torch.empty(m.n_seq * n_split * 2, m.dim, m.N, device=u.device, dtype=m.acc)
    launch(1, tot)
    tot = tot.view(m.n_seq, n_split, 2, m.dim, m.N)
    enter = torch.empty(m.n_seq, n_split, m.dim, m.N, device=u.device, dtype=m.acc)
    h = h0.to(m.acc) if h0 is not None else torch.zeros_like(hT)
    for r in range(n_split):
        enter[:, r] = h
        h = tot[:, r, 0] * h + tot[:, r, 1]
    hT.copy_(h)
    launch(2, enter.view(-1, m.dim, m.N))
    return out, hT, states, slots


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, zoh,
                cu_seqlens):
        G = n_groups(B, C)
        B4, C4 = as4d(B, G), as4d(C, G)
        need_grad = any(ctx.needs_input_grad)
        out, hT, states, slots = _forward(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus,
                                          initial_state, zoh, cu_seqlens, need_grad)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                              states if need_grad else None, slots)
        ctx.delta_softplus, ctx.zoh = bool(delta_softplus), zoh
        return out, hT

    @staticmethod
    def backward(ctx, dout, dhT):
        u, delta, A, B, C, D, z, delta_bias, h0, cu_seqlens, states, slots = ctx.saved_tensors
        G = n_groups(B, C)
        B4, C4 = as4d(B, G), as4d(C, G)
        m = _Meta(u, A, B4, cu_seqlens)
        dev = u.device
        dout = dout.contiguous() if dout is not None else torch.zeros_like(u)
        # du, ddelta, dz are written with one (contiguous) layout
        du = torch.empty(u.shape, device=dev, dtype=u.dtype)
        ddelta = torch.empty(u.shape, device=dev, dtype=delta.dtype)
        dz = torch.empty(u.shape, device=dev, dtype=z.dtype) if z is not None else None
        dB4 = torch.zeros(B4.shape, device=dev, dtype=m.acc)
        dC4 = torch.zeros(C4.shape, device=dev, dtype=m.acc)
        n_split = _pick_split(m, m.block_d_bwd, dev)
        tps = triton.cdiv(m.max_tiles(), n_split)
        # per-(sequence, run) partial sums, reduced below
        dA_p = torch.empty(m.n_seq * n_split, m.dim, m.block_n, device=dev, dtype=m.acc)
        dD_p = torch.empty(m.n_seq * n_split, m.dim, device=dev, dtype=m.acc)
        dbias_p = torch.empty(m.n_seq * n_split, m.dim, device=dev, dtype=m.acc)
        dh0 = torch.empty(m.n_seq, m.dim, m.N, device=dev, dtype=m.acc)
        z_ = z if z is not None else u
        dz_ = dz if dz is not None else du
        cu = cu_seqlens if cu_seqlens is not None else slots
        dhT_ = dhT.contiguous() if dhT is not None else None

        def launch(mode: int, aux: Tensor) -> None:
            if _autotune(u):
                kernel = _ssm_bwd_tuned[lambda meta: m.grid(meta["BLOCK_D"], n_split)]
                tiles = {}
            else:
                kernel = _ssm_bwd_kernel[m.grid(m.block_d_bwd, n_split)]
                tiles = dict(BLOCK_D=m.block_d_bwd, num_warps=m.warps_bwd)
            kernel(
                u, delta, A, B4, C4, D if D is not None else u, z_,
                delta_bias if delta_bias is not None else u,
                dout, dhT_ if dhT_ is not None else dh0, states, cu, slots,
                du, ddelta, dz_, dB4, dC4, dA_p, dD_p, dbias_p, dh0, aux,
                m.L, m.DG, m.N, m.dim, tps, n_split, triton.next_power_of_2(max(m.L, 1)),
                *u.stride(), *delta.stride(), *z_.stride(), *du.stride(),
                *A.stride(), *B4.stride(), *C4.stride(), *dh0.stride(),
                *dout.stride(), *dB4.stride(),
                T=m.T, BLOCK_N=m.block_n, HAS_D=D is not None,
                HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=ctx.delta_softplus, ZOH=ctx.zoh, HAS_DHT=dhT is not None,
                VARLEN=cu_seqlens is not None, ACC=tl_dtype(m.acc), LOG2_T=log2_exact(m.T),
                IDT=int_dtype(m.acc), NUM_STAGES=m.stages, MODE=mode, **tiles)

        if n_split == 1:
            launch(0, dh0)
        else:  # runs' co-state maps P ↦ a P + b, composed from the last run back, then runs
            maps = torch.empty(m.n_seq * n_split * 2, m.dim, m.N, device=dev, dtype=m.acc)
            launch(1, maps)
            maps = maps.view(m.n_seq, n_split, 2, m.dim, m.N)
            enter = torch.empty(m.n_seq, n_split, m.dim, m.N, device=dev, dtype=m.acc)
            P = dhT_.to(m.acc) if dhT_ is not None else torch.zeros_like(dh0)
            for r in reversed(range(n_split)):
                enter[:, r] = P
                P = maps[:, r, 0] * P + maps[:, r, 1]
            dh0.copy_(P)
            launch(2, enter.view(-1, m.dim, m.N))
        dA = dA_p[:, :, :m.N].sum(0).to(A.dtype)
        dD = dD_p.sum(0).to(D.dtype) if D is not None else None
        dbias = dbias_p.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
        dB, dC = from4d(dB4, B.dim(), B.dtype), from4d(dC4, C.dim(), C.dtype)
        dh0 = dh0.to(h0.dtype) if h0 is not None else None
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, dh0, None, None


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Tensor | None = None, z: Tensor | None = None,
                          delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          initial_state: Tensor | None = None, return_final_state: bool = False,
                          scheme: str = "euler_b", cu_seqlens: Tensor | None = None):
    """Triton selective scan; same arguments, shapes and results as ``selective_scan_ref``:
    u, delta, z (B, D, L); A (D, N); B, C (B, N, L) or (B, G, N, L); D, delta_bias (D,);
    initial_state (B, D, N) (or (S, D, N) with ``cu_seqlens`` (S+1,)). Returns y (B, D, L)
    in u's dtype, and the float32/float64 final state with ``return_final_state``."""
    validate(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state,
             scheme=scheme, cu_seqlens=cu_seqlens)
    if initial_state is not None:
        initial_state = initial_state.contiguous()  # read with the (S, D, N) state layout
    y, hT = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                   initial_state, scheme == "zoh", cu_seqlens)
    return (y, hT) if return_final_state else y


def load() -> Callable:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    return selective_scan_triton
