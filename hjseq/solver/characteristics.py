"""Hamilton's equations of a block's Hamiltonian, integrated token by token.

Along a characteristic of ``u_t + H(t, h, ∇u; x) = 0``

    ḣ = ∂H/∂p,        ṗ = −∂H/∂h,        u̇ = p·∂H/∂p − H.

A sequence of L tokens is L pieces of continuous time: the input (the Hamiltonian's
``drive``) is held over token k, which spans ``[τ_k, τ_k + Δ_k]``. Each piece is integrated
in normalised time s ∈ [0, 1] (``d/ds = Δ_k d/dt``):

* scalar Δ_k (one per sample): the time change is exact for any H, ``K = Δ_k H``;
* per-coordinate Δ_k (gated and selective blocks: the learned time warp is a diagonal
  matrix) is defined for control-affine ``H = p·F`` only: ``K = p·(Δ_k ⊙ F)``, i.e.
  ``ḣ = Δ_k ⊙ F``, ``ṗ = −(∂F/∂h)ᵀ(Δ_k ⊙ p)``, ``u̇ = 0``.

    sol = solve_characteristics(ElmanRNN(), h0, p0, t=torch.arange(L + 1.0), inputs=drives)
    sol.h   # (B, L+1, *S) states at the token boundaries; sol.p, sol.u likewise
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

from .ode import ODEStats, integrate

Drive = Mapping[str, Tensor]
Inputs = Union[None, Sequence[Drive], Callable[[int, Tensor], Drive]]


@dataclass
class CharacteristicSolution:
    """h, p: (B, L+1, *S) at the token boundaries; u: (B, L+1); stats: total ODE work."""

    h: Tensor
    p: Tensor
    u: Tensor
    stats: ODEStats


def _is_control_affine(hamiltonian: Any) -> bool:
    from hjseq.spec import Hamiltonian  # local: the solver imports without the core

    cls = type(hamiltonian)
    return (isinstance(hamiltonian, Hamiltonian) and cls.hamiltonian is Hamiltonian.hamiltonian
            and cls.dH_dp is Hamiltonian.dH_dp)


def _state_dims(hamiltonian: Any) -> int:
    return int(getattr(hamiltonian, "state_dims", 1))


def _steps(t: Tensor | None, dt: Any, L: int | None, h0: Tensor) -> tuple[Tensor, Tensor | None]:
    """Per-token steps (L, B, *broadcast) and knot times (L+1,) if shared, else None."""
    if (t is None) == (dt is None):
        raise ValueError("give exactly one of t (knot times (L+1,)) and dt (per-token steps)")
    B, S = h0.shape[0], h0.shape[1:]
    if t is not None:
        t = torch.as_tensor(t, dtype=h0.dtype, device=h0.device)
        if t.dim() != 1 or t.numel() < 1:
            raise ValueError(f"t must be 1-D knot times (L+1,), got shape {tuple(t.shape)}")
        d = t[1:] - t[:-1]
        if (d <= 0).any():
            raise ValueError("t must be strictly increasing (token k spans [t_k, t_{k+1}])")
        return d.reshape(-1, *([1] * (1 + len(S)))).expand(-1, B, *([1] * len(S))), t
    dt = torch.as_tensor(dt, dtype=h0.dtype, device=h0.device)
    if dt.dim() == 1:  # (L,)
        steps = dt.reshape(-1, 1, *([1] * len(S))).expand(-1, B, *([1] * len(S)))
    elif dt.dim() >= 2 and dt.shape[0] == B:  # (B, L) or (B, L, *S-broadcastable)
        steps = dt.movedim(1, 0)
        steps = steps.reshape(*steps.shape, *([1] * (2 + len(S) - steps.dim())))
    else:
        raise ValueError(f"dt must be (L,), (B, L) or (B, L, *S) with B = {B}, got "
                         f"{tuple(dt.shape)}")
    if (steps <= 0).any() or not torch.isfinite(steps).all():
        raise ValueError("dt must be finite and > 0")
    if L is not None and steps.shape[0] != L:
        raise ValueError(f"dt has {steps.shape[0]} tokens but inputs has {L}")
    return steps, None


def solve_characteristics(hamiltonian: Any, h0: Tensor, p0: Tensor | None = None,
                          t: Tensor | Sequence[float] | None = None, inputs: Inputs = None, *,
                          dt: Tensor | None = None, u0: Tensor | None = None,
                          method: str = "dopri5", rtol: float = 1e-10, atol: float = 1e-12,
                          **options) -> CharacteristicSolution:
    """Integrate ``(h, p, u)`` along the characteristics of ``hamiltonian`` over a sequence.

    hamiltonian: a ``hjseq.spec.Hamiltonian`` (``hamiltonian``, ``dH_dp``, ``dH_dh``,
    ``value_rate``); h0: (B, *S); p0: like h0 (zeros if None); u0: (B,) (zeros if None).
    Steps: ``t`` knot times (L+1,) shared by the batch (token k spans [t_k, t_{k+1}]), or
    ``dt`` per-token steps (L,), (B, L) or per-coordinate (B, L, *S) (control-affine H only).
    inputs: the drive of each token — a sequence of L mappings, a callable
    ``(k, h_k) -> drive`` evaluated at the state where token k starts (for drives computed
    from the previous state, e.g. LSTM gates), or None (no drive; then L comes from t/dt).
    method/rtol/atol/options: as :func:`hjseq.solver.ode.integrate`.
    Not differentiable (runs without a graph); use :func:`hjseq.solver.costate` for gradients.
    """
    if not isinstance(h0, Tensor) or not h0.is_floating_point() or h0.dim() < 2:
        raise ValueError("h0 must be a floating tensor (B, *S)")
    p0 = torch.zeros_like(h0) if p0 is None else p0
    if p0.shape != h0.shape:
        raise ValueError(f"p0 must have h0's shape {tuple(h0.shape)}, got {tuple(p0.shape)}")
    B, S = h0.shape[0], h0.shape[1:]
    u0 = h0.new_zeros(B) if u0 is None else u0.to(h0)
    if u0.shape != (B,):
        raise ValueError(f"u0 must be (B,) = ({B},), got {tuple(u0.shape)}")
    n_inputs = len(inputs) if isinstance(inputs, Sequence) else None
    steps, knots = _steps(t, dt, n_inputs, h0)
    if n_inputs is not None and n_inputs != steps.shape[0]:
        raise ValueError(f"inputs has {n_inputs} tokens but t/dt give {steps.shape[0]}")
    sd = _state_dims(hamiltonian)
    if h0.dim() - 1 != sd:
        raise ValueError(f"h0 must be (B, *S) with {sd} state axes for "
                         f"{type(hamiltonian).__name__}, got {tuple(h0.shape)}")
    n = h0[0].numel()
    stats = ODEStats()
    hs, ps, us = [h0], [p0], [u0]
    h, p, u = h0, p0, u0
    with torch.no_grad():
        for k in range(steps.shape[0]):
            delta = steps[k]  # (B, *broadcast)
            per_coordinate = delta[0].numel() > 1
            if per_coordinate and not _is_control_affine(hamiltonian):
                raise ValueError(f"a per-coordinate step needs a control-affine Hamiltonian "
                                 f"(H = p·F); {type(hamiltonian).__name__} is not — give one "
                                 "step per sample")
            drive = (inputs(k, h) if callable(inputs) else
                     {} if inputs is None else inputs[k])
            t0 = float(knots[k]) if knots is not None else float(k)
            span = float(knots[k + 1] - knots[k]) if knots is not None else 1.0

            def field(s: float, z: Tensor, delta=delta, drive=drive, t0=t0, span=span) -> Tensor:
                hh = z[:, :n].reshape(B, *S)
                pp = z[:, n:2 * n].reshape(B, *S)
                tt = t0 + s * span
                if per_coordinate:
                    pd = delta * pp
                    dh = delta * hamiltonian.dH_dp(tt, hh, pd, drive)
                    dp = -hamiltonian.dH_dh(tt, hh, pd, drive)
                    du = hamiltonian.value_rate(tt, hh, pd, drive)
                else:
                    dB = delta.reshape(B)
                    dh = dB.reshape(B, *([1] * len(S))) * hamiltonian.dH_dp(tt, hh, pp, drive)
                    dp = -dB.reshape(B, *([1] * len(S))) * hamiltonian.dH_dh(tt, hh, pp, drive)
                    du = dB * hamiltonian.value_rate(tt, hh, pp, drive)
                return torch.cat([dh.reshape(B, n), dp.reshape(B, n), du.reshape(B, 1)], 1)

            z0 = torch.cat([h.reshape(B, n), p.reshape(B, n), u.reshape(B, 1)], 1)
            res = integrate(field, z0, [0.0, 1.0], method=method, rtol=rtol, atol=atol, **options)
            z1 = res.ys[-1]
            stats.nfe += res.stats.nfe
            stats.n_accepted += res.stats.n_accepted
            stats.n_rejected += res.stats.n_rejected
            h, p, u = z1[:, :n].reshape(B, *S), z1[:, n:2 * n].reshape(B, *S), z1[:, -1]
            hs.append(h)
            ps.append(p)
            us.append(u)
    return CharacteristicSolution(torch.stack(hs, 1), torch.stack(ps, 1), torch.stack(us, 1),
                                  stats)


def integrate_field(rhs: Callable[[Tensor], Tensor], h: Tensor, method: str = "dopri5",
                    rtol: float = 1e-10, atol: float = 1e-12, **options) -> Tensor:
    """Flow of an autonomous field ``dh/dτ = rhs(h)`` over τ ∈ [0, 1] (a token in normalised
    time, e.g. ``lambda h: view.rhs(k, h)`` of a block's characteristics view). h: (B, S)."""
    with torch.no_grad():
        return integrate(lambda s, y: rhs(y), h, [0.0, 1.0], method=method, rtol=rtol,
                         atol=atol, **options).ys[-1]
