"""Discretization schemes of the characteristic ODE ``ḣ = F(t, h; x)``, torchdiffeq style.

``SCHEMES = {name: Scheme}``; a scheme has an ``order`` (``math.inf`` for an exact flow), the
structure it ``needs`` from the Hamiltonian (checked when an ``HJSpec`` is built), and
``step(hamiltonian, dt, t, h, drive) -> h_next`` advancing the state over one step of size
``dt`` (a float, or a tensor broadcastable to h for per-coordinate steps):

============  ==========================================================  ========  ======
name          update                                                      needs     order
============  ==========================================================  ========  ======
euler         h + Δ F(t, h)                                               velocity  1
gated_euler   h + Δ ⊙ F(t, h), Δ per coordinate and data-dependent        velocity  1
zoh           e^{Δa} h + Δ φ₁(Δa) b   for F = a⊙h + b (b held)           affine    exact
euler_b       e^{Δa} h + Δ b          (Mamba's discretization)            affine    1
hopf_cole     h + 2Δ p  for H = |p|² (exact: ṗ = 0); values and Gibbs      quadratic exact
              weights by the Hopf–Cole closed form (``hjseq.hopf``)
exp_          e^{Δa} h + Δ[(1 − λ) e^{Δa} b_{k−1} + λ b_k], λ = drive     affine    2
trapezoidal   "trap" (default ½): Mamba-3's rule; carries b_{k−1}
============  ==========================================================  ========  ======

For an affine field every scheme but ``hopf_cole`` is a linear map
``h ← Ā h + s b`` (:meth:`Scheme.discrete_affine` gives ``(Ā, s)``); the engine's fused
paths (``linear_scan``, ``ssd``) run any affine Hamiltonian under any of these schemes
from that one method, so a new scheme is one entry here and works for every Hamiltonian
of the structure it needs.

``exp_trapezoidal`` is the trapezoid rule on the variation-of-constants integral
``∫₀^Δ e^{(Δ−s)a} b(s) ds`` with the input interpolated linearly between the ends of the
token, so it is second order (λ = ½) for that flow; λ = 1 is ``euler_b``. It is the one
scheme that ``carries_input``: the engine keeps the previous token's input term b_{k−1} in
the state (``hjseq.engine.CarriedState``), and the decoding step carries it.

``zoh`` and ``euler_b`` agree to O(Δ²) per step: both multiply h by e^{Δa}; the input terms
``Δ φ₁(Δa) b`` and ``Δ b`` differ by ``Δ² a b / 2 + O(Δ³)``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from . import hopf
from .exponential import phi1

if TYPE_CHECKING:  # the spec module imports this one; Hamiltonians are duck-typed here
    from .spec import Drive, Hamiltonian

Step = Union[float, Tensor]


class Scheme:
    """One fixed-step scheme. Subclasses set ``name``, ``order``, ``needs`` and define
    :meth:`step` (and :meth:`discrete_affine` when they are linear maps on affine fields)."""

    name: str = ""
    order: float = 1
    needs: str = "velocity"
    carries_input: bool = False  # the step reads the previous token's input term

    def check(self, hamiltonian: "Hamiltonian") -> None:
        """Raise if ``hamiltonian`` does not declare the structure this scheme needs."""
        have = type(hamiltonian).structures()
        if self.needs not in have:
            hint = {"affine": "define affine(t, drive) -> (a, b) with F = a⊙h + b (a subclass "
                              "that changes velocity must restate affine)",
                    "quadratic": "hopf_cole is exact only for H = |p|² (hamiltonians.Quadratic)",
                    "velocity": "define velocity(t, h, drive) -> ḣ"}[self.needs]
            usable = sorted(n for n, s in SCHEMES.items() if s.needs in have)
            raise ValueError(f"scheme {self.name!r} needs a Hamiltonian that declares "
                             f"{self.needs!r}; {type(hamiltonian).__name__} declares "
                             f"{sorted(have) or 'nothing'}: {hint}, or use one of {usable}")

    def step(self, hamiltonian: "Hamiltonian", dt: Step, t: float, h: Tensor,
             drive: "Drive") -> Tensor:
        """Advance ``h`` (B, S) over one step ``dt`` of ``ḣ = ∂H/∂p``; returns (B, S)."""
        raise NotImplementedError

    def discrete_affine(self, a: Tensor | float, dt: Step) -> tuple[Tensor, Step]:
        """``(Ā, s)`` with the step on ``F = a⊙h + b`` equal to ``Ā ⊙ h + s ⊙ b`` (a, Δ:
        tensors or numbers broadcastable to h; s may be a number)."""
        raise NotImplementedError(f"scheme {self.name!r} is not a linear map on affine fields")

    def log_decay(self, a: Tensor, dt: Step) -> Tensor:
        """``log Ā`` (the fused ``ssd`` path takes the decay in log form)."""
        return torch.log(self.discrete_affine(a, dt)[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"


class Euler(Scheme):
    """Forward Euler ``h + Δ F(t, h)``; on an affine field ``(1 + Δa) h + Δ b``."""

    name, order = "euler", 1

    def step(self, hamiltonian: "Hamiltonian", dt: Step, t: float, h: Tensor,
             drive: "Drive") -> Tensor:
        return h + dt * hamiltonian.velocity(t, h, drive)

    def discrete_affine(self, a: Tensor | float, dt: Step) -> tuple[Tensor, Step]:
        decay = dt * a
        return (decay.add_(1) if isinstance(decay, Tensor) else torch.tensor(1 + decay)), dt


class GatedEuler(Euler):
    """Euler with a per-coordinate, data-dependent step ``Δ`` (B, S): ``h + Δ ⊙ F(t, h)``.
    Identical arithmetic to Euler; the step rule (``GateStep``/``DriveStep``) supplies Δ."""

    name = "gated_euler"

    def step(self, hamiltonian: "Hamiltonian", dt: Step, t: float, h: Tensor,
             drive: "Drive") -> Tensor:
        if isinstance(dt, Tensor) and not _broadcasts_to(dt.shape, h.shape):
            raise ValueError(f"gated_euler: the step Δ {tuple(dt.shape)} must broadcast to the "
                             f"state {tuple(h.shape)}")
        return super().step(hamiltonian, dt, t, h, drive)


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


class ZOH(Scheme):
    """Zero-order hold: the exact flow of the linear field ``F = a⊙h + b`` with the input
    held over the step, ``h ← e^{Δa} h + Δ φ₁(Δa) b``. Needs ``hamiltonian.affine``."""

    name, order, needs = "zoh", math.inf, "affine"

    def step(self, hamiltonian: "Hamiltonian", dt: Step, t: float, h: Tensor,
             drive: "Drive") -> Tensor:
        a, b = hamiltonian.affine(t, drive)
        decay, scale = self.discrete_affine(a, dt)
        return decay * h + scale * b

    def discrete_affine(self, a: Tensor | float, dt: Step) -> tuple[Tensor, Step]:
        dA = torch.as_tensor(dt * a)
        return torch.exp(dA), dt * phi1(dA)

    def log_decay(self, a: Tensor | float, dt: Step) -> Tensor:
        return torch.as_tensor(dt * a)


class EulerB(ZOH):
    """Mamba's discretization: ``Ā = e^{Δa}`` (exact on the homogeneous part), ``B̄ = Δ b``:
    ``h ← e^{Δa} h + Δ b``. First order; needs ``hamiltonian.affine``."""

    name, order = "euler_b", 1

    def discrete_affine(self, a: Tensor | float, dt: Step) -> tuple[Tensor, Step]:
        return torch.exp(torch.as_tensor(dt * a)), dt


class ExpTrapezoidal(ZOH):
    """Exponential-trapezoidal (Mamba-3's discretization): ``h ← e^{Δa} h + Δ[(1 − λ)
    e^{Δa} b_{k−1} + λ b_k]`` with ``λ`` = ``drive["trap"]`` (default ½) and ``b_{k−1}`` =
    ``drive["previous_input"]`` (the engine supplies it). Second order for the linear flow
    with the input interpolated linearly across the token; λ = 1 is ``euler_b``."""

    name, order, carries_input = "exp_trapezoidal", 2, True

    def step(self, hamiltonian: "Hamiltonian", dt: Step, t: float, h: Tensor,
             drive: "Drive") -> Tensor:
        a, b = hamiltonian.affine(t, drive)
        decay, inp = self.combine(a, dt, drive["previous_input"], b, drive.get("trap", 0.5))
        return decay * h + inp

    @staticmethod
    def combine(a: Tensor | float, dt: Step, b_prev: Tensor, b: Tensor,
                lam: Tensor | float = 0.5) -> tuple[Tensor, Tensor]:
        """``(e^{Δa}, Δ[(1 − λ) e^{Δa} b_prev + λ b])``: the decay and the input term."""
        decay = torch.exp(torch.as_tensor(dt * a))
        return decay, dt * ((1 - lam) * decay * b_prev + lam * b)

    def discrete_affine(self, a: Tensor | float, dt: Step) -> tuple[Tensor, Step]:
        raise NotImplementedError("exp_trapezoidal mixes two tokens' inputs: use combine()")


class HopfCole(Scheme):
    """Exact scheme for ``H = |p|²``. Characteristics are straight lines (``ṗ = 0``):
    ``step`` returns ``h + 2Δ p`` (p = ``drive["p"]``). The value function and the
    attribution weights come from the discrete Hopf–Cole formula over atoms ``(y, g)``
    (``hjseq.hopf``): :meth:`value` is ``u_ε(x, t)``, :meth:`weights` is ``π_j(x)``."""

    name, order, needs = "hopf_cole", math.inf, "quadratic"

    def step(self, hamiltonian: "Hamiltonian", dt: Step, t: float, h: Tensor,
             drive: "Drive") -> Tensor:
        return h + 2 * dt * drive["p"]

    @staticmethod
    def value(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
        """``u_ε(x, t) = −ε log Σ_j exp(−(g_j + |x − y_j|²/(4t))/ε)`` (ε = 0: Hopf–Lax)."""
        return hopf.hopf_cole(x, y, g, t, eps)

    @staticmethod
    def weights(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
        """Gibbs weights ``π_j(x)`` (..., N), rows summing to 1."""
        return hopf.gibbs_weights(x, y, g, t, eps)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (Euler(), GatedEuler(), ZOH(), EulerB(),
                                                  ExpTrapezoidal(), HopfCole())}


OP_SCHEMES: tuple[str, ...] = ("euler_b", "zoh")
"""The schemes the selective-scan family of kernel ops (selective_scan, selective_state_update,
ssd) implement natively: ``Ā = e^{ΔA}`` with ``B̄ = Δ B`` or ``Δ φ₁(ΔA) B``."""


def get_scheme(name: str) -> Scheme:
    """The scheme registered under ``name``; a clear error listing the names otherwise."""
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {name!r}") from None


def schemes_for(hamiltonian_cls: type) -> list[str]:
    """The scheme names a Hamiltonian class can take (derived from its declarations)."""
    have = hamiltonian_cls.structures()
    return sorted(n for n, s in SCHEMES.items() if s.needs in have)


def register_scheme(scheme: Scheme) -> None:
    """Add a scheme to :data:`SCHEMES` under ``scheme.name``."""
    if not scheme.name:
        raise ValueError("register_scheme: the scheme needs a non-empty .name")
    if scheme.needs not in ("velocity", "affine", "head_affine", "quadratic"):
        raise ValueError(f"register_scheme: needs must be 'velocity', 'affine', 'head_affine' "
                         f"or 'quadratic', got {scheme.needs!r}")
    SCHEMES[scheme.name] = scheme


__all__ = ["Scheme", "Euler", "GatedEuler", "ZOH", "EulerB", "ExpTrapezoidal", "HopfCole", "SCHEMES", "OP_SCHEMES",
           "get_scheme", "schemes_for", "register_scheme"]
