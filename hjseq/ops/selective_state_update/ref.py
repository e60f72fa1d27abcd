"""Executable definition of the single-token selective-state update (Mamba decoding step).

One step of the selective scan (see ``hjseq/ops/selective_scan/ref.py``), for every batch
row b, channel d and state index n, with ``Δ = softplus(dt + dt_bias)`` (if asked)::

    h' = Ā ⊙ h + B̄ x,     y = C · h' + D x,     out = y ⊙ silu(z)

with ``Ā = exp(Δ A)`` and ``B̄ = Δ B`` (``scheme="euler_b"``, Mamba's) or
``B̄ = (exp(Δ A) − 1)/A · B`` (``scheme="zoh"``). Shapes (mamba-ssm's
``selective_state_update``): state (B, D, N); x, dt, z (B, D); A (D, N); B, C (B, N) or
(B, G, N) with D divisible by G; D, dt_bias (D,). Computed in float32 (float64 for
float64 inputs). Returns ``(out (B, D) in x's dtype, new_state (B, D, N) in state's
dtype)``; unlike mamba-ssm the input state is not modified in place.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .._checks import check_tensor
from ..selective_scan.ref import discretize
from hjseq.ops._dtypes import accumulation_dtype

OP = "selective_state_update"


def check_inputs(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Tensor | None, z: Tensor | None, dt_bias: Tensor | None,
                 scheme: str) -> None:
    """Raise a clear error for any argument of the wrong shape, dtype or device."""
    check_tensor(OP, "x", x, (None, None), "(B, D)")
    batch, dim = x.shape
    dev = x.device
    check_tensor(OP, "state", state, (batch, dim, None), "(B, D, N)", device=dev)
    N = state.shape[2]
    check_tensor(OP, "dt", dt, (batch, dim), "(B, D)", device=dev)
    check_tensor(OP, "A", A, (dim, N), "(D, N)", device=dev)
    for name, X in (("B", B), ("C", C)):
        check_tensor(OP, name, X, None, device=dev)
        ok = (X.dim() == 2 and X.shape == (batch, N)) or (
            X.dim() == 3 and X.shape[0] == batch and X.shape[2] == N and X.shape[1] > 0
            and dim % X.shape[1] == 0)
        if not ok:
            raise ValueError(f"{OP}: {name} must be (B, N) = {(batch, N)} or (B, G, N) with G "
                             f"dividing D={dim}, got {tuple(X.shape)}")
    if B.dim() != C.dim() or B.shape != C.shape:
        raise ValueError(f"{OP}: B and C must have the same shape, got {tuple(B.shape)} and "
                         f"{tuple(C.shape)}")
    if D is not None:
        check_tensor(OP, "D", D, (dim,), "(D,)", device=dev)
    if z is not None:
        check_tensor(OP, "z", z, (batch, dim), "(B, D)", device=dev)
    if dt_bias is not None:
        check_tensor(OP, "dt_bias", dt_bias, (dim,), "(D,)", device=dev)
    if scheme not in ("euler_b", "zoh"):
        raise ValueError(f"{OP}: scheme must be 'euler_b' or 'zoh', got {scheme!r}")


def _expand_groups(X: Tensor, dim: int) -> Tensor:
    """(B, N) or (B, G, N) -> (B, D, N)."""
    if X.dim() == 2:
        return X.unsqueeze(1).expand(X.shape[0], dim, X.shape[1])
    return X.repeat_interleave(dim // X.shape[1], dim=1)


def selective_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                               C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                               dt_bias: Tensor | None = None, dt_softplus: bool = False,
                               scheme: str = "euler_b") -> tuple[Tensor, Tensor]:
    """One decoding step; see the module docstring. Returns ``(out, new_state)``."""
    check_inputs(state, x, dt, A, B, C, D, z, dt_bias, scheme)
    acc = accumulation_dtype(x.dtype)
    dim = x.shape[1]
    delta = dt.to(acc)
    if dt_bias is not None:
        delta = delta + dt_bias.to(acc)
    if dt_softplus:
        delta = F.softplus(delta)
    Abar, Bscale = discretize(delta.unsqueeze(-1), A.to(acc), scheme)  # (B, D, 1, N)
    Bx = _expand_groups(B.to(acc), dim)
    Cx = _expand_groups(C.to(acc), dim)
    h = Abar[:, :, 0] * state.to(acc) + Bscale[:, :, 0] * Bx * x.to(acc).unsqueeze(-1)
    y = (h * Cx).sum(-1)
    if D is not None:
        y = y + D.to(acc) * x.to(acc)
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(x.dtype), h.to(state.dtype)


def load():
    return selective_state_update_ref
