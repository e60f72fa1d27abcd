"""Executable definition of the selective scan (Mamba's S6 recurrence).

Per channel d and state index n, with ``Δ = softplus(delta + delta_bias)`` (if asked):

    h_t = Ā_t ⊙ h_{t-1} + B̄_t u_t,      y_t = C_t · h_t + D u_t,      out = y ⊙ silu(z)

``scheme="euler_b"`` (Mamba's):  Ā = exp(Δ A),  B̄ = Δ B.
``scheme="zoh"`` (exact flow of ḣ = A h + B u with u held over the step):
                                 Ā = exp(Δ A),  B̄ = (exp(Δ A) − 1)/A · B   (→ Δ B as A → 0).

Layouts (mamba-ssm's ``selective_scan_fn``): u, delta, z: (B, D, L); A: (D, N) real;
B, C: (B, N, L) or (B, G, N, L) with D divisible by G, or time-invariant (D, N) (S4D's
B_{d,n}, the same at every step); D, delta_bias: (D,);
initial_state: (B, D, N). Computation in float32 (float64 for float64 inputs); the
output has u's dtype and the final state is float32/float64.

Variable length: with ``cu_seqlens`` (int, shape (S+1,), cumulative lengths) the batch
is 1 and the L axis packs S sequences; the state restarts at each sequence start,
``initial_state`` is (S, D, N) and the final state is (S, D, N).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from hjseq.exponential import phi1
from hjseq.ops._dtypes import accumulation_dtype


def discretize(delta: Tensor, A: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """Return ``(Ā, B̄/B)`` factors of shape (B, D, L, N) for ``Δ`` (B, D, L) and A (D, N)."""
    dA = torch.einsum("bdl,dn->bdln", delta, A)
    Abar = torch.exp(dA)
    if scheme == "euler_b":
        Bscale = delta.unsqueeze(-1).expand_as(dA)
    elif scheme == "zoh":
        # B̄/B = (exp(ΔA) − 1)/A = Δ·φ₁(ΔA), φ₁(x) = expm1(x)/x, smooth through A = 0
        # (a Taylor branch near 0 keeps the value and its derivative, Δ²/2, exact there).
        Bscale = delta.unsqueeze(-1) * phi1(dA)
    else:
        raise ValueError(f"scheme must be 'euler_b' or 'zoh', got {scheme!r}")
    return Abar, Bscale


def _expand_groups(X: Tensor, dim: int, batch: int = 1, L: int = 1) -> Tensor:
    """(B, N, L), (B, G, N, L) or time-invariant (D, N) -> (B, D, N, L)."""
    if X.dim() == 2:
        return X[None, :, :, None].expand(batch, dim, X.shape[1], L)
    if X.dim() == 3:
        return X.unsqueeze(1).expand(X.shape[0], dim, *X.shape[1:])
    G = X.shape[1]
    return X.repeat_interleave(dim // G, dim=1)


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None = None, z: Tensor | None = None,
                       delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       initial_state: Tensor | None = None, return_final_state: bool = False,
                       scheme: str = "euler_b", cu_seqlens: Tensor | None = None):
    if cu_seqlens is not None:
        return _varlen(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                       return_final_state, scheme, cu_seqlens)
    dtype_in = u.dtype
    acc = accumulation_dtype(dtype_in)
    u, delta, A = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, L = u.shape
    Bx = _expand_groups(B.to(acc), dim, batch, L)  # (B, D, N, L)
    Cx = _expand_groups(C.to(acc), dim, batch, L)
    Abar, Bscale = discretize(delta, A, scheme)  # (B, D, L, N)
    BU = Bscale * torch.einsum("bdnl,bdl->bdln", Bx, u)
    h = (initial_state.to(acc) if initial_state is not None
         else u.new_zeros(batch, dim, A.shape[1]))
    ys = []
    for t in range(L):
        h = Abar[:, :, t] * h + BU[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, Cx[:, :, :, t]))
    y = torch.stack(ys, dim=2) if L > 0 else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(dtype_in)
    return (y, h) if return_final_state else y


def _varlen(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
            return_final_state, scheme, cu_seqlens):
    bounds = cu_seqlens.tolist()
    ys, hs = [], []
    for s in range(len(bounds) - 1):
        a, b = bounds[s], bounds[s + 1]
        y, h = selective_scan_ref(
            u[..., a:b], delta[..., a:b], A, B if B.dim() == 2 else B[..., a:b],
            C if C.dim() == 2 else C[..., a:b], D,
            None if z is None else z[..., a:b], delta_bias, delta_softplus,
            None if initial_state is None else initial_state[s:s + 1], True, scheme)
        ys.append(y)
        hs.append(h)
    y = torch.cat(ys, dim=-1)
    h = torch.cat(hs, dim=0)
    return (y, h) if return_final_state else y


def load():
    return selective_scan_ref
