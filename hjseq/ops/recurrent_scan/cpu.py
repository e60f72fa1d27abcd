"""``recurrent_scan`` CPU backend: the fused C++ time loop (csrc/cpu/recurrent_scan.cpp) —
one GEMM for all input projections, a per-step BLAS GEMM with a fused pointwise cell, and
BPTT in C++ — exposed as ``torch.library`` custom ops with fake kernels and autograd, so
``torch.compile(fullgraph=True)`` traces through it. bf16/fp16 inputs run in float32.
Same signature and semantics as ref.py."""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from .._autograd import backward_can_follow, intermediates_for_backward
from .._build import load_extension
from .ref import CELLS
from hjseq.ops._dtypes import accumulation_dtype

_CELL_CODE = {"rnn_tanh": 0, "gru": 1, "lstm": 2}


def _ext() -> ModuleType:
    return load_extension("recurrent_scan", ["cpu/recurrent_scan.cpp"])  # built once, then cached by name


@torch.library.custom_op("hjseq::recurrent_scan_fwd", mutates_args=(), device_types="cpu")
def _fwd(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
         h0: Tensor, c0: Tensor | None, noise: Tensor | None, cell: int,
         dt: float, save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    out, hT, cT, s1, s2 = _ext().forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, noise, dt,
                                         save)
    return out, hT, cT, s1, s2


@_fwd.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, c0, noise, cell, dt, save):
    Bsz, L, _ = x.shape
    H = w_hh.shape[1]
    lstm = cell == _CELL_CODE["lstm"]
    slots = L if save else 1
    return (x.new_empty(Bsz, L, H), x.new_empty(Bsz, H), x.new_empty((Bsz, H) if lstm else (0,)),
            x.new_empty(slots, Bsz, H if cell == _CELL_CODE["rnn_tanh"] else 4 * H),
            x.new_empty(slots if lstm else 0, Bsz, H))


@torch.library.custom_op("hjseq::recurrent_scan_bwd", mutates_args=(), device_types="cpu")
def _bwd(x: Tensor, w_ih: Tensor, w_hh: Tensor, has_b_ih: bool, has_b_hh: bool, h0: Tensor,
         c0: Tensor | None, has_noise: bool, cell: int, dt: float, out: Tensor, s1: Tensor,
         s2: Tensor, g_out: Tensor, g_hT: Tensor, g_cT: Tensor | None) -> list[Tensor]:
    return list(_ext().backward(cell, x, w_ih, w_hh, has_b_ih, has_b_hh, h0, c0, has_noise, dt,
                                out, s1, s2, g_out, g_hT, g_cT))


@_bwd.register_fake
def _(x, w_ih, w_hh, has_b_ih, has_b_hh, h0, c0, has_noise, cell, dt, out, s1, s2, g_out,
      g_hT, g_cT):
    lstm = cell == _CELL_CODE["lstm"]
    return [torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty(w_ih.shape[0] if has_b_ih else 0),
            x.new_empty(w_ih.shape[0] if has_b_hh else 0), torch.empty_like(h0),
            torch.empty_like(h0) if lstm else x.new_empty(0),
            torch.empty_like(out) if has_noise else x.new_empty(0)]


def _setup(ctx, inputs, output) -> None:
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, noise, cell, dt, _save = inputs
    out, _, _, s1, s2 = output
    ctx.cell, ctx.dt = cell, dt
    ctx.has = (b_ih is not None, b_hh is not None, c0 is not None, noise is not None)
    ctx.save_for_backward(x, w_ih, w_hh, h0, c0, out, s1, s2)
    intermediates_for_backward(ctx, s1, s2)


def _backward(ctx, g_out, g_hT, g_cT, _g_s1, _g_s2):
    x, w_ih, w_hh, h0, c0, out, s1, s2 = ctx.saved_tensors
    has_b_ih, has_b_hh, has_c0, has_noise = ctx.has
    lstm = ctx.cell == _CELL_CODE["lstm"]
    # the kernel reads each output's gradient: zeros for an output the loss did not use
    g_out = torch.zeros_like(out) if g_out is None else g_out
    g_hT = torch.zeros_like(h0) if g_hT is None else g_hT
    g_cT = None if not lstm else torch.zeros_like(h0) if g_cT is None else g_cT
    dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dnoise = _bwd(
        x, w_ih, w_hh, has_b_ih, has_b_hh, h0, c0, has_noise, ctx.cell, ctx.dt, out, s1, s2,
        g_out, g_hT, g_cT)
    return (dx, dw_ih, dw_hh, db_ih if has_b_ih else None, db_hh if has_b_hh else None, dh0,
            dc0 if has_c0 else None, dnoise if has_noise else None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup)


def recurrent_scan_cpu(cell: str, x: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                       bias_ih: Tensor | None, bias_hh: Tensor | None, h0: Tensor | None,
                       c0: Tensor | None = None, dt: float = 1.0,
                       noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """x (B, L, I) → (out (B, L, H), h_T (B, H), c_T (B, H) or None); see ref.py."""
    if cell not in CELLS:
        raise ValueError(f"recurrent_scan: cell must be one of {list(CELLS)}, got {cell!r}")
    dtype = x.dtype
    acc = accumulation_dtype(dtype)

    def up(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(acc)

    Bsz, H = x.shape[0], weight_hh.shape[1]
    h0 = up(h0) if h0 is not None else x.new_zeros(Bsz, H, dtype=acc)
    if cell == "lstm" and c0 is None:
        c0 = x.new_zeros(Bsz, H, dtype=acc)
    # the per-step gates are stored only when a backward can follow
    save = backward_can_follow(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, noise)
    out, hT, cT, _, _ = _fwd(up(x), up(weight_ih), up(weight_hh), up(bias_ih), up(bias_hh), h0,
                             up(c0) if cell == "lstm" else None, up(noise), _CELL_CODE[cell],
                             float(dt), save)
    return out.to(dtype), hT.to(dtype), (cT.to(dtype) if cell == "lstm" else None)


def load():
    _ext()
    return recurrent_scan_cpu
