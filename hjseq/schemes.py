"""Discretization schemes of the characteristic ODE ``ḣ = F(t, h; x)``, torchdiffeq style.

``SCHEMES = {name: Scheme}``; a scheme has an ``order`` (``math.inf`` for an exact flow) and
``step(hamiltonian, dt, t, h, drive) -> h_next`` advancing the state over one step of size
``dt`` (a float, or a tensor broadcastable to h for per-coordinate steps):

============  ==========================================================  ======
name          update                                                      order
============  ==========================================================  ======
euler         h + Δ F(t, h)                                               1
gated_euler   h + Δ ⊙ F(t, h), Δ per coordinate and data-dependent        1
zoh           e^{Δa} h + (e^{Δa} − 1)/a · b   for F = a⊙h + b (b held)   exact
euler_b       e^{Δa} h + Δ b                  (Mamba's discretization)    1
hopf_cole     h + 2Δ p  for H = |p|² (exact: ṗ = 0); values and Gibbs      exact
              weights by the Hopf–Cole closed form (``hjseq.hopf``)
============  ==========================================================  ======

``zoh`` and ``euler_b`` agree to O(Δ²) per step: both multiply h by e^{Δa}; the input terms
``(e^{Δa} − 1)/a·b`` and ``Δ b`` differ by ``Δ² a b / 2 + O(Δ³)``.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

from . import hopf
from .hamiltonians import Quadratic
from .spec import Drive, Hamiltonian

Step = Union[float, Tensor]


class Scheme:
    """One fixed-step scheme. Subclasses set ``name``, ``order`` and define :meth:`step`."""

    name: str = ""
    order: float = 1

    def step(self, hamiltonian: Hamiltonian, dt: Step, t: float, h: Tensor,
             drive: Drive) -> Tensor:
        """Advance ``h`` (B, S) over one step ``dt`` of ``ḣ = ∂H/∂p``; returns (B, S)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"


class Euler(Scheme):
    """Forward Euler ``h + Δ F(t, h)``."""

    name, order = "euler", 1

    def step(self, hamiltonian: Hamiltonian, dt: Step, t: float, h: Tensor,
             drive: Drive) -> Tensor:
        return h + dt * hamiltonian.velocity(t, h, drive)


class GatedEuler(Euler):
    """Euler with a per-coordinate, data-dependent step ``Δ`` (B, S): ``h + Δ ⊙ F(t, h)``.
    Identical arithmetic to Euler; the step rule (``GateStep``) supplies the tensor Δ."""

    name = "gated_euler"

    def step(self, hamiltonian: Hamiltonian, dt: Step, t: float, h: Tensor,
             drive: Drive) -> Tensor:
        if isinstance(dt, Tensor) and not _broadcasts_to(dt.shape, h.shape):
            raise ValueError(f"gated_euler: the step Δ {tuple(dt.shape)} must broadcast to the "
                             f"state {tuple(h.shape)}")
        return super().step(hamiltonian, dt, t, h, drive)


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _expm1_over(a: Tensor, dt: Step) -> Tensor:
    """``(e^{Δa} − 1)/a`` with its limit ``Δ`` where a = 0."""
    dA = dt * a
    zero = a == 0
    safe = torch.where(zero, torch.ones_like(a), a)
    full = torch.expm1(dA) / safe
    dt_t = dt if isinstance(dt, Tensor) else torch.tensor(dt, dtype=a.dtype, device=a.device)
    return torch.where(zero, dt_t.to(full.dtype), full)


class ZOH(Scheme):
    """Zero-order hold: the exact flow of the linear field ``F = a⊙h + b`` with the input
    held over the step, ``h ← e^{Δa} h + (e^{Δa} − 1)/a · b``. Needs ``hamiltonian.affine``."""

    name, order = "zoh", math.inf

    def step(self, hamiltonian: Hamiltonian, dt: Step, t: float, h: Tensor,
             drive: Drive) -> Tensor:
        a, b = hamiltonian.affine(t, drive)
        return torch.exp(dt * a) * h + _expm1_over(a, dt) * b


class EulerB(Scheme):
    """Mamba's discretization: ``Ā = e^{Δa}`` (exact on the homogeneous part), ``B̄ = Δ b``:
    ``h ← e^{Δa} h + Δ b``. First order; needs ``hamiltonian.affine``."""

    name, order = "euler_b", 1

    def step(self, hamiltonian: Hamiltonian, dt: Step, t: float, h: Tensor,
             drive: Drive) -> Tensor:
        a, b = hamiltonian.affine(t, drive)
        return torch.exp(dt * a) * h + dt * b


class HopfCole(Scheme):
    """Exact scheme for ``H = |p|²``. Characteristics are straight lines (``ṗ = 0``):
    ``step`` returns ``h + 2Δ p`` (p = ``drive["p"]``). The value function and the
    attribution weights come from the discrete Hopf–Cole formula over atoms ``(y, g)``
    (``hjseq.hopf``): :meth:`value` is ``u_ε(x, t)``, :meth:`weights` is ``π_j(x)``."""

    name, order = "hopf_cole", math.inf

    def step(self, hamiltonian: Hamiltonian, dt: Step, t: float, h: Tensor,
             drive: Drive) -> Tensor:
        if not isinstance(hamiltonian, Quadratic):
            raise TypeError("hopf_cole is exact only for H = |p|² (hamiltonians.Quadratic), got "
                            f"{type(hamiltonian).__name__}; use euler/zoh for other Hamiltonians")
        return h + 2 * dt * drive["p"]

    @staticmethod
    def value(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
        """``u_ε(x, t) = −ε log Σ_j exp(−(g_j + |x − y_j|²/(4t))/ε)`` (ε = 0: Hopf–Lax). (...)"""
        return hopf.hopf_cole(x, y, g, t, eps)

    @staticmethod
    def weights(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
        """Gibbs weights ``π_j(x)`` (..., N), rows summing to 1."""
        return hopf.gibbs_weights(x, y, g, t, eps)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (Euler(), GatedEuler(), ZOH(), EulerB(),
                                                  HopfCole())}


def get_scheme(name: str) -> Scheme:
    """The scheme registered under ``name``; a clear error listing the names otherwise."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {name!r}") from None


def register_scheme(scheme: Scheme) -> None:
    """Add a scheme to :data:`SCHEMES` under ``scheme.name``."""
    if not scheme.name:
        raise ValueError("register_scheme: the scheme needs a non-empty .name")
    SCHEMES[scheme.name] = scheme


__all__ = ["Scheme", "Euler", "GatedEuler", "ZOH", "EulerB", "HopfCole", "SCHEMES",
           "get_scheme", "register_scheme"]
