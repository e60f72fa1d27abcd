"""Executable definition of the single-token selective-state update (Mamba decoding step).

One step of the selective scan (see ``hjseq/ops/selective_scan/ref.py``), for every batch
row b, head h, channel p and state index n, with ``Δ = softplus(dt + dt_bias)`` (if asked)::

    h' = Ā ⊙ h + B̄ x,     y = C · h' + D x,     out = y ⊙ silu(z)

with ``Ā = exp(Δ A)`` and ``B̄ = Δ B`` (``scheme="euler_b"``, Mamba's) or
``B̄ = (exp(Δ A) − 1)/A · B`` (``scheme="zoh"``).

Two layouts (mamba-ssm's ``selective_state_update``):

* channels: state (S, D, N); x, dt, z (B, D); A (D, N); B, C (B, N) or (B, G, N) with G
  dividing D (channel d reads group ``d // (D/G)``); D, dt_bias (D,).
* heads (Mamba-2): state (S, H, P, N); x, dt, z (B, H, P); A (H, P, N); B, C (B, G, N) with
  G dividing H (head h reads group ``h // (H/G)``); D, dt_bias (H, P). A, dt, dt_bias and D
  may be "tied" over P and N (expanded with stride 0, as mamba-ssm's Mamba-2 passes them).

The channels layout is the heads layout with H = D, P = 1 (:func:`canonical`).
``state_batch_indices`` (B,) int: batch row b reads and writes state row
``state_batch_indices[b]`` of a pool of S rows (S = B without it). Computed in float32
(float64 for float64 inputs); ``out`` is in x's dtype, the state in its own dtype.

Returns ``(out, new_state)``. ``inplace=False``: ``state`` is left unchanged and
``new_state`` is a new tensor of state's shape (rows not named by ``state_batch_indices``
copied). ``inplace=True``: ``state`` itself is updated (mamba-ssm's behaviour) and returned.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hjseq.schemes import OP_SCHEMES

from .._checks import FLOAT_DTYPES
from ..selective_scan.ref import phi1
from hjseq.ops._dtypes import accumulation_dtype

OP = "selective_state_update"
SCHEMES = OP_SCHEMES  # the one list, in hjseq.schemes


def _fail(msg: str, exc: type = ValueError) -> None:
    raise exc(f"{OP}: {msg}")


def _check_float(name: str, t: object, device: torch.device) -> Tensor:
    if not isinstance(t, Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if t.dtype not in FLOAT_DTYPES:
        _fail(f"{name} must be float32/float64/bfloat16/float16, got {t.dtype}", TypeError)
    if t.device != device:
        _fail(f"{name} is on {t.device} but x is on {device}; move it with "
              f".to({str(device)!r})")
    return t


def _check_shape(name: str, t: Tensor, want: tuple[int, ...], dims: str) -> None:
    if tuple(t.shape) != tuple(want):
        _fail(f"{name} must have shape {dims} = {tuple(want)}, got {tuple(t.shape)}")


def check_inputs(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Tensor | None, z: Tensor | None, dt_bias: Tensor | None,
                 scheme: str, state_batch_indices: Tensor | None = None) -> None:
    """Raise a clear error (naming the argument, the expected and the given sizes) for any
    argument of the wrong type, shape, dtype or device, or an unknown scheme."""
    if not isinstance(x, Tensor):
        _fail(f"x must be a torch.Tensor, got {type(x).__name__}", TypeError)
    dev = x.device
    _check_float("x", x, dev)
    if x.dim() not in (2, 3):
        _fail(f"x must be (B, D) (channels layout) or (B, H, P) (heads layout), got shape "
              f"{tuple(x.shape)}")
    heads = x.dim() == 3
    batch = x.shape[0]
    inner = tuple(x.shape[1:])                      # (D,) or (H, P)
    names = "(B, H, P)" if heads else "(B, D)"
    _check_float("state", state, dev)
    if state.dim() != x.dim() + 1 or tuple(state.shape[1:-1]) != inner or state.shape[-1] < 1:
        want = "(S, H, P, N)" if heads else "(S, D, N)"
        sizes = "(S, " + ", ".join(map(str, inner)) + ", N)"
        _fail(f"state must have shape {want} = {sizes} with N >= 1 (x is {names} = "
              f"{tuple(x.shape)}), got {tuple(state.shape)}")
    N = state.shape[-1]
    if state_batch_indices is None:
        if state.shape[0] != batch:
            _fail(f"state has {state.shape[0]} rows but x has batch {batch}; pass "
                  f"state_batch_indices (B,) to read a pool of state rows")
    else:
        idx = state_batch_indices
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int32, torch.int64):
            _fail(f"state_batch_indices must be an int32/int64 tensor (B,) = ({batch},), got "
                  f"{getattr(idx, 'dtype', type(idx).__name__)}", TypeError)
        if tuple(idx.shape) != (batch,):
            _fail(f"state_batch_indices must have shape (B,) = ({batch},), got "
                  f"{tuple(idx.shape)}")
        if idx.device != dev:
            _fail(f"state_batch_indices is on {idx.device} but x is on {dev}")
        if batch and not torch.compiler.is_compiling():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= state.shape[0]:
                _fail(f"state_batch_indices must lie in [0, S={state.shape[0]}), got values "
                      f"in [{lo}, {hi}]")
            if torch.unique(idx).numel() != batch:
                _fail("state_batch_indices must be distinct (two batch rows would write the "
                      "same state row)")
    _check_float("dt", dt, dev)
    _check_shape("dt", dt, tuple(x.shape), names)
    _check_float("A", A, dev)
    _check_shape("A", A, inner + (N,), "(H, P, N)" if heads else "(D, N)")
    for name, X in (("B", B), ("C", C)):
        _check_float(name, X, dev)
        split = inner[0]  # groups divide H (heads) or D (channels)
        ok = (X.dim() == 2 and tuple(X.shape) == (batch, N)) or (
            X.dim() == 3 and X.shape[0] == batch and X.shape[2] == N and X.shape[1] > 0
            and split % X.shape[1] == 0)
        if not ok:
            _fail(f"{name} must be (B, N) = {(batch, N)} or (B, G, N) = ({batch}, G, {N}) with "
                  f"G dividing {'H' if heads else 'D'}={split}, got {tuple(X.shape)}")
    if tuple(B.shape) != tuple(C.shape):
        _fail(f"B and C must have the same shape, got {tuple(B.shape)} and {tuple(C.shape)}")
    for name, X in (("D", D), ("dt_bias", dt_bias)):
        if X is not None:
            _check_float(name, X, dev)
            _check_shape(name, X, inner, "(H, P)" if heads else "(D,)")
    if z is not None:
        _check_float("z", z, dev)
        _check_shape("z", z, tuple(x.shape), names)
    if scheme not in SCHEMES:
        _fail(f"scheme must be one of {SCHEMES}, got {scheme!r}")


class Canonical(NamedTuple):
    """The heads layout of any call: state (S, H, P, N); x, dt, z (B, H, P); A (H, P, N);
    B, C (B, G, N); D, dt_bias (H, P). All are views of the caller's tensors."""
    state: Tensor
    x: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None
    z: Tensor | None
    dt_bias: Tensor | None
    heads: bool


def canonical(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
              D: Tensor | None, z: Tensor | None, dt_bias: Tensor | None) -> Canonical:
    """Views in the heads layout; the channels layout maps to H = D, P = 1."""
    B3 = B.unsqueeze(1) if B.dim() == 2 else B
    C3 = C.unsqueeze(1) if C.dim() == 2 else C
    if x.dim() == 3:
        return Canonical(state, x, dt, A, B3, C3, D, z, dt_bias, True)
    col = lambda t: None if t is None else t.unsqueeze(-1)  # noqa: E731
    return Canonical(state.unsqueeze(2), x.unsqueeze(-1), dt.unsqueeze(-1), A.unsqueeze(1),
                     B3, C3, col(D), col(z), col(dt_bias), False)


def selective_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                               C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                               dt_bias: Tensor | None = None, dt_softplus: bool = False,
                               scheme: str = "euler_b",
                               state_batch_indices: Tensor | None = None,
                               inplace: bool = False) -> tuple[Tensor, Tensor]:
    """One decoding step; see the module docstring. Returns ``(out, new_state)``."""
    check_inputs(state, x, dt, A, B, C, D, z, dt_bias, scheme, state_batch_indices)
    c = canonical(state, x, dt, A, B, C, D, z, dt_bias)
    acc = accumulation_dtype(x.dtype)
    H = c.x.shape[1]
    delta = c.dt.to(acc)
    if c.dt_bias is not None:
        delta = delta + c.dt_bias.to(acc)
    if dt_softplus:
        delta = F.softplus(delta)
    dA = delta.unsqueeze(-1) * c.A.to(acc)                               # (B, H, P, N)
    Bscale = delta.unsqueeze(-1) * (phi1(dA) if scheme == "zoh" else 1.0)
    Bh = c.B.to(acc).repeat_interleave(H // c.B.shape[1], dim=1).unsqueeze(2)  # (B, H, 1, N)
    Ch = c.C.to(acc).repeat_interleave(H // c.C.shape[1], dim=1).unsqueeze(2)
    idx = state_batch_indices
    h0 = (c.state if idx is None else c.state[idx.long()]).to(acc)
    h = torch.exp(dA) * h0 + Bscale * Bh * c.x.to(acc).unsqueeze(-1)
    y = (h * Ch).sum(-1)
    if c.D is not None:
        y = y + c.D.to(acc) * c.x.to(acc)
    if c.z is not None:
        y = y * F.silu(c.z.to(acc))
    out = y.to(x.dtype) if c.heads else y[..., 0].to(x.dtype)
    target = state if inplace else state.clone()
    tview = target if c.heads else target.unsqueeze(2)
    if idx is None:
        tview.copy_(h)
    else:
        tview[idx.long()] = h.to(state.dtype)
    return out, target


def load():
    return selective_state_update_ref
