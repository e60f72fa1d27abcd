"""CPU backend of ``ssd_scan``: the chunked C++ kernel in ``csrc/cpu/ssd.cpp``.

Same definition and layouts as ``ref.py``. Per chunk of ``chunk_size`` tokens the kernel
does the intra-chunk work as matmuls ((L ∘ C Bᵀ) X, the chunk's state Xᵀ diag(decay) B),
passes the (p, n) states between chunks in a short sequential pass per (sequence, head),
and runs OpenMP over (chunk, head) and (chunk, group); see the .cpp header. fp32
accumulation (fp64 for fp64 inputs): inputs are cast to that dtype here.

Autograd: the forward keeps the state entering every chunk and, when a gradient is wanted
(grad mode on and an input requiring grad; never at inference), every chunk's C Bᵀ
((nc, g, Q, Q): 12.6 MB at L 2048, 24 groups, Q 64, as much as x; 0.5 MB with one group);
the backward reads it (and recomputes the chunk's decays) instead of redoing that matmul:
4-5 ms of ~55 at that shape (one thread). Both directions are ``torch.library`` custom ops
(``hjseq::ssd_cpu_fwd`` / ``_bwd``) with fake kernels, so ``torch.compile`` traces them.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from .._autograd import backward_can_follow, intermediates_for_backward
from .._build import DEFAULT_CFLAGS, load_extension
from .._dtypes import accumulation_dtype


def _ext() -> ModuleType:
    # -ffp-contract=fast: a*b + c may become one FMA (-std=c++17 turns contraction off)
    return load_extension("ssd", ["cpu/ssd.cpp"],
                          extra_cflags=[*DEFAULT_CFLAGS, "-ffp-contract=fast"])


def _n_chunks_alloc(batch: int, L: int, nseq: int, varlen: bool, chunk: int) -> int:
    # the kernel's bound on the number of chunks (a function of shapes only)
    return (L + nseq * (chunk - 1)) // chunk if varlen else batch * ((L + chunk - 1) // chunk)


@torch.library.custom_op("hjseq::ssd_cpu_fwd", mutates_args=(), device_types="cpu")
def _fwd(x: Tensor, ld: Tensor, B: Tensor, C: Tensor, init_t: Optional[Tensor], cu: Tensor,
         varlen: bool, chunk: int, keep_cb: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x (b, l, h, p), ld (b, l, h), B, C (b, l, g, n), init_t (nseq, h, n, p), all in one
    float dtype. Returns y, final_t (nseq, h, n, p), chunk-entry states (nc, h, n, p) and,
    with keep_cb, every chunk's C Bᵀ (nc, g, Q, Q) (else an empty tensor)."""
    if keep_cb:
        y, fin_t, st, cb = _ext().forward_keep_cb(x, ld, B, C, init_t, cu, varlen, chunk)
    else:
        y, fin_t, st = _ext().forward(x, ld, B, C, init_t, cu, varlen, chunk)
        cb = x.new_empty(0)
    return y, fin_t, st, cb


@_fwd.register_fake
def _(x, ld, B, C, init_t, cu, varlen, chunk, keep_cb):
    batch, L, H, P = x.shape
    G, N = B.shape[-2:]
    nseq = cu.shape[0] - 1 if varlen else batch
    nc = _n_chunks_alloc(batch, L, nseq, varlen, chunk)
    cb = x.new_empty(nc, G, chunk, chunk) if keep_cb else x.new_empty(0)
    return torch.empty_like(x), x.new_empty(nseq, H, N, P), x.new_empty(nc, H, N, P), cb


@torch.library.custom_op("hjseq::ssd_cpu_bwd", mutates_args=(), device_types="cpu")
def _bwd(dy: Tensor, dfin_t: Optional[Tensor], x: Tensor, ld: Tensor, B: Tensor, C: Tensor,
         st: Tensor, cb: Optional[Tensor], cu: Tensor, varlen: bool,
         chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """cb: the forward's C Bᵀ per chunk, or None (then the kernel recomputes it)."""
    dx, dld, dB, dC, dinit_t = _ext().backward(dy, dfin_t, x, ld, B, C, st, cu, varlen, chunk,
                                               cb)
    return dx, dld, dB, dC, dinit_t


@_bwd.register_fake
def _(dy, dfin_t, x, ld, B, C, st, cb, cu, varlen, chunk):
    batch, _, H, P = x.shape
    nseq = cu.shape[0] - 1 if varlen else batch
    return (torch.empty_like(x), torch.empty_like(ld), torch.empty_like(B), torch.empty_like(C),
            x.new_empty(nseq, H, B.shape[-1], P))


def _setup(ctx, inputs, output) -> None:
    x, ld, B, C, init_t, cu, varlen, chunk, keep_cb = inputs
    ctx.save_for_backward(x, ld, B, C, output[2], output[3], cu)
    ctx.flags = (varlen, chunk, init_t is not None, keep_cb)
    intermediates_for_backward(ctx, output[2], output[3])


def _backward(ctx, dy, dfin_t, _dst, _dcb):
    x, ld, B, C, st, cb, cu = ctx.saved_tensors
    varlen, chunk, has_init, keep_cb = ctx.flags
    dy = torch.zeros_like(x) if dy is None else dy.to(x.dtype).contiguous()
    if dfin_t is not None:
        dfin_t = dfin_t.to(x.dtype).contiguous()
    dx, dld, dB, dC, dinit_t = _bwd(dy, dfin_t, x, ld, B, C, st, cb if keep_cb else None, cu,
                                    varlen, chunk)
    return dx, dld, dB, dC, (dinit_t if has_init else None), None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup)


def ssd_scan_cpu(x: Tensor, log_decay: Tensor, B: Tensor, C: Tensor,
                 initial_states: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                 return_final_states: bool = False, chunk_size: int = 64,
                 keep_cb: Optional[bool] = None):
    """Chunked CPU SSD scan; arguments, shapes and result as ``ref.ssd_scan_ref`` (x (b, l,
    h, p); log_decay (b, l, h); B, C (b, l, g, n); states (b or s, h, p, n)). Inputs are
    assumed validated (``checks.py``). keep_cb: keep C Bᵀ per chunk for the backward;
    None means exactly when autograd will run a backward (tests force both paths)."""
    acc = accumulation_dtype(x.dtype)
    varlen = cu_seqlens is not None
    cu = (cu_seqlens.to(torch.int64).contiguous() if varlen
          else torch.tensor([0, x.shape[1]], dtype=torch.int64))
    init_t = (None if initial_states is None
              else initial_states.to(acc).transpose(-1, -2).contiguous())
    if keep_cb is None:
        keep_cb = backward_can_follow(x, log_decay, B, C, initial_states)
    y, fin_t = _fwd(x.to(acc).contiguous(), log_decay.to(acc).contiguous(),
                    B.to(acc).contiguous(), C.to(acc).contiguous(), init_t, cu, varlen,
                    int(chunk_size), bool(keep_cb))[:2]
    y = y.to(x.dtype)
    if return_final_states:
        return y, fin_t.transpose(-1, -2).contiguous()
    return y


def load():
    """Build (or reuse) the extension; raises BackendUnavailable if it cannot be built."""
    _ext()
    return ssd_scan_cpu
