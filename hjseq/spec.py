"""The HJ spec: a Hamiltonian, a viscosity, a step rule and a scheme.

A recurrent block is the discretization of the characteristics of a Hamilton–Jacobi
equation ``u_t + H(t, h, ∇u; x) = ε Δu`` (DESIGN §1). Along a characteristic

    ḣ = ∂H/∂p,        ṗ = −∂H/∂h,        u̇ = p·∂H/∂p − H.

Every recurrent Hamiltonian of hjseq is *control-affine in p*, ``H = p·F(t, h; x)``, so the
state equation ``ḣ = F(t, h; x)`` does not involve p and ``F`` is the block's vector field
(:meth:`Hamiltonian.velocity`). The quadratic Hamiltonian ``H = |p|²`` of the LSE and
attention blocks is the exception: its characteristics are straight lines ``ḣ = 2p`` with
``p`` constant.

A :class:`HJSpec` declares

- ``hamiltonian``: a :class:`Hamiltonian` (``hjseq.hamiltonians`` has one per block);
- ``viscosity`` ε ≥ 0: a float, a per-channel tensor, or a learnable ``nn.Parameter``. In a
  recurrent block ε > 0 means stochastic characteristics ``dh = F dt + √(2ε) dW``; in the
  LSE/attention blocks it is the temperature;
- ``step``: the step-size rule giving Δ for one token — :class:`ConstantStep` (Δ = dt),
  :class:`GateStep` (per-coordinate data-dependent Δ = dt·gate(h, x), the GRU), or
  :class:`SoftplusStep` (Mamba's learned time warp Δ = softplus(proj + bias));
- ``scheme``: a name in :data:`hjseq.schemes.SCHEMES` (``euler``, ``gated_euler``, ``zoh``,
  ``euler_b``, ``hopf_cole``).

``drive`` is the Hamiltonian's per-token input: a ``dict[str, Tensor]`` whose entries the
block prepares (input projections of the token, held coupling weights, gates); each
Hamiltonian's docstring lists the keys it reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Drive = Mapping[str, Tensor]
"""Per-token inputs of a Hamiltonian: name -> tensor (token tensors (B, ·), or held weights)."""


class Hamiltonian(nn.Module):
    """``H(t, h, p; x)``. Subclasses define :meth:`velocity` (control-affine H = p·F) or
    override :meth:`hamiltonian` and :meth:`dH_dp` (general H).

    Shapes: ``h`` and ``p`` are (B, S) (or any (..., S)); ``t`` is a float; ``drive`` holds
    tensors broadcastable against ``h`` (see each subclass). A Hamiltonian whose state has
    more than one axis (the SSM's (B, D, N)) sets ``state_dims``; H and u̇ sum over them.
    """

    state_dims: int = 1

    def _dot(self, p: Tensor, v: Tensor) -> Tensor:
        return (p * v).sum(tuple(range(-self.state_dims, 0)))

    def velocity(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        """``ḣ = ∂H/∂p = F(t, h; x)`` (B, S). Only for Hamiltonians linear in p."""
        raise NotImplementedError(
            f"{type(self).__name__} must define velocity(t, h, drive) (H = p·F) or override "
            "hamiltonian() and dH_dp()")

    def hamiltonian(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        """``H(t, h, p; x)``: shape (B,). Default: ``p · velocity`` (control-affine H)."""
        return self._dot(p, self.velocity(t, h, drive))

    def dH_dp(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        """``∂H/∂p`` (B, S); equal to :meth:`velocity` for control-affine H."""
        return self.velocity(t, h, drive)

    def dH_dh(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        """``∂H/∂h`` (B, S): the co-state equation is ``ṗ = −∂H/∂h``.

        Default by autograd (``(∂F/∂h)ᵀ p`` for H = p·F, a vector–Jacobian product);
        subclasses override with the closed form where they know it. Differentiable (the
        graph is kept when the inputs require grad)."""
        keep_graph = torch.is_grad_enabled() and (h.requires_grad or p.requires_grad)
        with torch.enable_grad():
            h_ = h if h.requires_grad else h.detach().requires_grad_(True)
            H = self.hamiltonian(t, h_, p, drive).sum()
            (g,) = torch.autograd.grad(H, h_, create_graph=keep_graph)
        return g

    def value_rate(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        """``u̇ = p·∂H/∂p − H`` along a characteristic: shape (B,) (zero for H = p·F)."""
        return self._dot(p, self.dH_dp(t, h, p, drive)) - self.hamiltonian(t, h, p, drive)

    def affine(self, t: float, drive: Drive) -> tuple[Tensor, Tensor]:
        """``(a, b)`` with ``F(t, h; x) = a ⊙ h + b`` (diagonal linear field), needed by the
        exponential schemes ``zoh``/``euler_b``. Only linear Hamiltonians define it."""
        raise NotImplementedError(
            f"{type(self).__name__} is not linear in h (F = a⊙h + b); the zoh/euler_b schemes "
            "need a linear Hamiltonian — use scheme='euler' or 'gated_euler'")


# ----------------------------------------------------------------------------- step rules

class StepRule:
    """Gives the step Δ of one token: a float or a tensor broadcastable to h (B, S)."""

    dt: float

    def __call__(self, t: float, h: Tensor, drive: Drive) -> Union[float, Tensor]:
        raise NotImplementedError


def _check_dt(dt: float) -> float:
    if isinstance(dt, Tensor):
        raise TypeError("dt must be a Python float (the constant time step), got a Tensor; "
                        "use SoftplusStep/GateStep for a data-dependent step")
    dt = float(dt)
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a finite number > 0 (the time step Δ), got {dt}")
    return dt


@dataclass
class ConstantStep(StepRule):
    """``Δ = dt`` for every token and coordinate."""

    dt: float = 1.0

    def __post_init__(self) -> None:
        self.dt = _check_dt(self.dt)

    def __call__(self, t: float, h: Tensor, drive: Drive) -> float:
        return self.dt


@dataclass
class GateStep(StepRule):
    """Per-coordinate, data-dependent step ``Δ = dt · gate(t, h, drive)``, gate ∈ [0, 1]
    of shape (B, S) — the GRU's ``Δ(1 − s)``. ``gate`` is usually a Hamiltonian method."""

    gate: Callable[[float, Tensor, Drive], Tensor]
    dt: float = 1.0

    def __post_init__(self) -> None:
        self.dt = _check_dt(self.dt)

    def __call__(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        return self.dt * self.gate(t, h, drive)


@dataclass
class SoftplusStep(StepRule):
    """Mamba's learned time warp ``Δ = softplus(drive[key] + bias)`` (per channel, per token).

    ``drive[key]`` is the token's step pre-activation (B, D); ``bias`` (D,) is an optional
    extra offset (HJMamba folds ``dt_proj.bias`` into ``drive[key]`` and leaves it None).
    ``Δ`` broadcasts over trailing state axes: for a state (B, D, N) it is returned (B, D, 1).
    ``dt`` (the nominal step, used to scale noise) is 1."""

    bias: Tensor | None = None
    key: str = "delta"
    dt: float = 1.0

    def __call__(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        d = drive[self.key]
        if self.bias is not None:
            d = d + self.bias
        d = F.softplus(d)
        return d.reshape(*d.shape, *([1] * (h.dim() - d.dim())))


# ----------------------------------------------------------------------------- the spec

Viscosity = Union[float, Tensor]


def check_viscosity(viscosity: Viscosity, name: str = "eps") -> Viscosity:
    """Validate ε ≥ 0 (float, tensor or parameter) and return it (floats as float)."""
    if isinstance(viscosity, Tensor):
        if not torch.is_floating_point(viscosity):
            raise TypeError(f"{name} (viscosity) must be a floating tensor, got {viscosity.dtype}")
        v = viscosity.detach()
        if torch.isnan(v).any() or (v < 0).any():
            raise ValueError(f"{name} (viscosity) must be >= 0 everywhere (no NaN); "
                             f"got min {v.min().item() if v.numel() else 'n/a'}")
        return viscosity
    try:
        value = float(viscosity)
    except (TypeError, ValueError):
        raise TypeError(f"{name} (viscosity) must be a float or a tensor, got "
                        f"{type(viscosity).__name__}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} (viscosity) must be a finite number >= 0, got {value}")
    return value


@dataclass
class HJSpec:
    """Declarative description of a block as an HJ discretization.

    hamiltonian: the :class:`Hamiltonian`; viscosity: ε ≥ 0 (float, per-channel tensor, or
    ``nn.Parameter``; re-checked by :meth:`validate` for learnable ones); step: a
    :class:`StepRule`; scheme: a name in ``hjseq.schemes.SCHEMES``.
    """

    hamiltonian: Hamiltonian
    viscosity: Viscosity = 0.0
    step: StepRule = field(default_factory=ConstantStep)
    scheme: str = "euler"

    def __post_init__(self) -> None:
        if not isinstance(self.hamiltonian, Hamiltonian):
            raise TypeError("hamiltonian must be a hjseq.spec.Hamiltonian, got "
                            f"{type(self.hamiltonian).__name__}")
        if not isinstance(self.step, StepRule):
            raise TypeError(f"step must be a StepRule (ConstantStep, GateStep, SoftplusStep), "
                            f"got {type(self.step).__name__}")
        from .schemes import SCHEMES  # local import: schemes imports spec
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {self.scheme!r}")
        self.viscosity = check_viscosity(self.viscosity)

    def validate(self) -> None:
        """Re-check the viscosity (a learnable ε may have been driven negative by training)."""
        check_viscosity(self.viscosity)

    @property
    def order(self) -> float:
        """Order of accuracy of the scheme (``math.inf`` for an exact one)."""
        from .schemes import SCHEMES
        return SCHEMES[self.scheme].order

    @property
    def stochastic(self) -> bool:
        """True when ε is (possibly) nonzero, i.e. the characteristics carry noise."""
        v = self.viscosity
        return bool((v.detach() != 0).any()) if isinstance(v, Tensor) else v != 0
