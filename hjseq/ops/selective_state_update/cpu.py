"""``selective_state_update`` CPU backend: the C++ kernel in
csrc/cpu/selective_state_update.cpp (forward only: decoding needs no gradient), wrapped as a
``torch.library`` custom op with a fake kernel so ``torch.compile`` traces through it. Same
signature and semantics as ref.py (both layouts, ``state_batch_indices``, ``inplace``)."""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import torch
from torch import Tensor

from .._build import load_extension
from .._dtypes import accumulation_dtype
from .ref import canonical, check_inputs


def _ext() -> ModuleType:
    return load_extension("selective_state_update", ["cpu/selective_state_update.cpp"])


def supports(**kw: Any) -> str | None:
    """Reason this call cannot run here, or None: the state must hold x's dtype or
    float32, and be contiguous along N (it may be written in place)."""
    state, x = kw.get("state"), kw.get("x")
    if isinstance(state, Tensor) and isinstance(x, Tensor):
        if state.dtype not in (x.dtype, torch.float32):
            return f"state dtype {state.dtype} is neither x's ({x.dtype}) nor float32"
        if state.dim() and state.shape[-1] > 1 and state.stride(-1) != 1:
            return "state is not contiguous along N"
    return None


@torch.library.custom_op("hjseq::selective_state_update_fwd", mutates_args=("dst",),
                         device_types="cpu")
def _fwd(src: Tensor, dst: Tensor, x: Tensor, dt: Tensor, z: Tensor | None, A: Tensor,
         B: Tensor, C: Tensor, D: Tensor | None, dt_bias: Tensor | None,
         idx: Tensor | None, softplus: bool, zoh: bool) -> Tensor:
    return _ext().forward(src, dst, x, dt, z, A, B, C, D, dt_bias, idx, softplus, zoh)


@_fwd.register_fake
def _(src, dst, x, dt, z, A, B, C, D, dt_bias, idx, softplus, zoh):
    return x.new_empty(x.shape)


def selective_state_update_cpu(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                               C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                               dt_bias: Tensor | None = None, dt_softplus: bool = False,
                               scheme: str = "euler_b",
                               state_batch_indices: Tensor | None = None,
                               inplace: bool = False) -> tuple[Tensor, Tensor]:
    """C++ decoding step; arguments and results as ``selective_state_update_ref``."""
    check_inputs(state, x, dt, A, B, C, D, z, dt_bias, scheme, state_batch_indices)
    reason = supports(state=state, x=x)
    if reason:
        raise ValueError(f"selective_state_update backend 'cpu': {reason}; use backend='ref'")
    c = canonical(state, x, dt, A, B, C, D, z, dt_bias)
    acc = accumulation_dtype(x.dtype)
    A4 = c.A.to(acc)
    if A4.stride(-1) not in (0, 1):
        A4 = A4.contiguous()
    small = lambda t: None if t is None else t.to(acc)  # noqa: E731  (H, P): strides kept
    same = lambda t: None if t is None else t.to(x.dtype)  # noqa: E731
    if inplace:
        dst = state
    elif state_batch_indices is None:
        dst = torch.empty_like(state, memory_format=torch.contiguous_format)
    else:
        dst = state.clone(memory_format=torch.contiguous_format)
    dst4 = dst if c.heads else dst.unsqueeze(2)
    src4 = dst4 if (state_batch_indices is not None and not inplace) else c.state
    out = _fwd(src4, dst4, c.x, same(c.dt), same(c.z), A4, c.B.to(acc).contiguous(),
               c.C.to(acc).contiguous(), small(c.D), small(c.dt_bias), state_batch_indices,
               bool(dt_softplus), scheme == "zoh")
    return (out if c.heads else out[..., 0]), dst


def load() -> Callable:
    _ext()
    return selective_state_update_cpu
