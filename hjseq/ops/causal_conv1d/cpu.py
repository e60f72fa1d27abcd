"""``causal_conv1d`` CPU backend: C++ forward and backward (dx, dweight, dbias,
dinitial_state) in csrc/cpu/causal_conv1d.cpp, exposed as ``torch.library`` custom ops with
fake kernels and autograd (``torch.compile(fullgraph=True)`` traces through). Same
signature and semantics as ref.py."""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from .._build import load_extension
from hjseq.ops._dtypes import accumulation_dtype

_ACTIVATIONS = {None: 0, "silu": 1, "swish": 1}


def _ext() -> ModuleType:
    return load_extension("causal_conv1d", ["cpu/causal_conv1d.cpp"])  # built once, then cached by name



@torch.library.custom_op("hjseq::causal_conv1d_fwd", mutates_args=(), device_types="cpu")
def _fwd(x: Tensor, weight: Tensor, bias: Tensor | None, h0: Tensor | None, cu: Tensor,
         act: int) -> tuple[Tensor, Tensor]:
    y, fin = _ext().forward(x, weight, bias, h0, cu, act)
    return y, fin


@_fwd.register_fake
def _(x, weight, bias, h0, cu, act):
    S = cu.shape[0] - 1
    return torch.empty_like(x), x.new_empty(S * x.shape[0], x.shape[1], weight.shape[1] - 1)


@torch.library.custom_op("hjseq::causal_conv1d_bwd", mutates_args=(), device_types="cpu")
def _bwd(x: Tensor, weight: Tensor, bias: Tensor | None, h0: Tensor | None, cu: Tensor,
         act: int, gy: Tensor, gfin: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dh0 = _ext().backward(x, weight, bias, h0, cu, act, gy, gfin)
    return dx, dw, db, dh0


@_bwd.register_fake
def _(x, weight, bias, h0, cu, act, gy, gfin):
    S = cu.shape[0] - 1
    acc = accumulation_dtype(x.dtype)
    return (torch.empty_like(x), weight.new_empty(weight.shape, dtype=acc),
            weight.new_empty(weight.shape[0] if bias is not None else 0, dtype=acc),
            x.new_empty(S * x.shape[0], x.shape[1], weight.shape[1] - 1, dtype=acc))


def _setup(ctx, inputs, output) -> None:
    x, weight, bias, h0, cu, act = inputs
    ctx.act = act
    ctx.has_bias, ctx.has_h0 = bias is not None, h0 is not None
    ctx.save_for_backward(x, weight, bias, h0, cu)


def _backward(ctx, gy: Tensor, gfin: Tensor):
    x, weight, bias, h0, cu = ctx.saved_tensors
    dx, dw, db, dh0 = _bwd(x, weight, bias, h0, cu, ctx.act, gy, gfin)
    return (dx, dw, db if ctx.has_bias else None, dh0 if ctx.has_h0 else None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup)


def causal_conv1d_cpu(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                      activation: str | None = None, initial_state: Tensor | None = None,
                      return_final_state: bool = False, cu_seqlens: Tensor | None = None):
    """x (B, D, L), weight (D, W), bias (D,) → y (B, D, L) [, final state (B|S, D, W−1)]."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', "
                         f"got {activation!r}")
    acc = accumulation_dtype(x.dtype)
    L = x.shape[-1]
    cu = (torch.tensor([0, L], dtype=torch.int64) if cu_seqlens is None
          else cu_seqlens.to(torch.int64))
    # weights, bias and history enter in the accumulation dtype; autograd casts grads back
    y, fin = _fwd(x, weight.to(acc), None if bias is None else bias.to(acc),
                  None if initial_state is None else initial_state.to(acc), cu,
                  _ACTIVATIONS[activation])
    return (y, fin) if return_final_state else y


def load():
    _ext()
    return causal_conv1d_cpu
