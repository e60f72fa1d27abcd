"""The HJ spec: a Hamiltonian, a viscosity, a step rule and a scheme.

A recurrent block is the discretization of the characteristics of a Hamilton–Jacobi
equation ``u_t + H(t, h, ∇u; x) = ε Δu``. Along a characteristic

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
  :class:`DriveStep` (Δ = dt·drive[key], a data-dependent gate read from the token),
  :class:`GateStep` (per-coordinate, state-dependent Δ = dt·gate(h, x), the GRU), or
  :class:`SoftplusStep` (Mamba's learned time warp Δ = softplus(proj + bias));
- ``scheme``: a name in :data:`hjseq.schemes.SCHEMES`, checked against what the
  Hamiltonian declares (:meth:`Hamiltonian.structures`) when the spec is built.

A Hamiltonian declares its structure by the methods it defines: ``velocity`` (any
control-affine H = p·F), ``affine`` (F = a⊙h + b: diagonal linear, the fused
``linear_scan`` path and the exponential schemes), ``head_affine`` (F = a S + x Bᵀ per
head: the chunked ``ssd`` path). The engine picks the kernel from these declarations,
never from the class name.

``drive`` is the Hamiltonian's per-token input: a ``dict[str, Tensor]`` whose entries the
block prepares (input projections of the token, held coupling weights, gates); each
Hamiltonian's docstring lists the keys it reads.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schemes import get_scheme
from .viscosity import Viscosity, check_viscosity

Drive = Mapping[str, Tensor]
"""Per-token inputs of a Hamiltonian: name -> tensor (token tensors (B, ·), or held weights)."""


def _defining_class(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO that defines ``name`` below :class:`Hamiltonian` (None if
    only the base class defines it)."""
    for klass in cls.__mro__:
        if klass is Hamiltonian or klass is nn.Module or klass is object:
            return None
        if name in vars(klass):
            return klass
    return None


def _overrides(cls: type, name: str) -> bool:
    return _defining_class(cls, name) is not None


def expand_groups(B: Tensor, heads: int) -> Tensor:
    """(..., G, N) -> (..., H, N): head i reads group i // (H/G)."""
    G = B.shape[-2]
    if heads % G:
        raise ValueError(f"the number of heads ({heads}) must be divisible by the number of "
                         f"B/C groups ({G})")
    return B.repeat_interleave(heads // G, dim=-2) if G != heads else B


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
        """``ḣ = ∂H/∂p = F(t, h; x)`` (B, S). Only for Hamiltonians linear in p. A
        Hamiltonian that declares only :meth:`affine` (or :meth:`head_affine`) gets
        ``F = a ⊙ h + b`` from it."""
        if "affine" in type(self).structures():
            a, b = self.affine(t, drive)
            return a * h + b
        raise NotImplementedError(
            f"{type(self).__name__} must define velocity(t, h, drive) -> ḣ (B, S) (H = p·F), "
            "or affine(t, drive) -> (a, b), or override hamiltonian() and dH_dp()")

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
        """``(a, b)`` with ``F(t, h; x) = a ⊙ h + b``, a and b independent of h and
        broadcastable to h (tensors, or a number for a: a diagonal linear field). Declaring it lets every scheme with
        ``needs == "affine"`` (``zoh``, ``euler_b``) take the Hamiltonian, and lets the
        engine run the block through the fused ``linear_scan`` op. A Hamiltonian that
        defines :meth:`head_affine` gets this method from it."""
        if _overrides(type(self), "head_affine"):
            a, x, B = self.head_affine(t, drive)
            return a[..., None, None], x.unsqueeze(-1) * expand_groups(B, x.shape[-2]).unsqueeze(-2)
        raise NotImplementedError(
            f"{type(self).__name__} is not linear in h (F = a⊙h + b): define affine(t, drive) "
            "-> (a, b), or use scheme='euler' or 'gated_euler'")

    def head_affine(self, t: float, drive: Drive) -> tuple[Tensor, Tensor, Tensor]:
        """Matrix-linear field per head: state S (B, H, P, N) and
        ``F = a ⊙ S + x Bᵀ`` with ``a`` (B, H) (one rate per head), ``x`` (B, H, P) and
        ``B`` (B, G, N) with H divisible by G (head i reads group i // (H/G)); all
        independent of S. Returns ``(a, x, B)``. Declaring it lets the engine run the
        block through the chunked ``ssd`` op (Mamba-2's structure)."""
        raise NotImplementedError(f"{type(self).__name__} does not define head_affine()")

    @classmethod
    def structures(cls) -> frozenset[str]:
        """What this Hamiltonian declares, the vocabulary schemes and kernels select on:
        ``"velocity"`` (ḣ = ∂H/∂p), ``"affine"`` (F = a⊙h + b), ``"head_affine"``
        (F = a S + x Bᵀ per head), ``"quadratic"`` (H = |p|²). A linear form counts only
        when declared in the same class as the velocity or below it, so a subclass that
        changes ``velocity`` without restating ``affine`` is not taken for affine."""
        out = set()
        v = _defining_class(cls, "velocity")
        if v is not None or _defining_class(cls, "hamiltonian") is not None:
            out.add("velocity")
        for form in ("head_affine", "affine"):
            where = _defining_class(cls, form)
            if where is not None and (v is None or issubclass(where, v)):
                out.add(form)
        if "head_affine" in out:
            out.add("affine")
        if "affine" in out:
            out.add("velocity")  # F = a ⊙ h + b
        return frozenset(out)


# ----------------------------------------------------------------------------- step rules

class StepRule(nn.Module):
    """Gives the step Δ of one token: a float or a tensor broadcastable to h (B, S).

    A module, so that a rule's parameters (a learned bias, say) belong to the block that
    owns the spec. ``reads_state`` says whether Δ depends on the state h; only rules that
    do not (``ConstantStep``, ``DriveStep``, ``SoftplusStep``) let the engine compute every
    token's Δ at once and take the fused scan paths."""

    dt: float
    reads_state: bool = True

    def forward(self, t: float, h: Tensor, drive: Drive) -> Union[float, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define forward(t, h, drive) -> Δ")


def _check_dt(dt: float) -> float:
    if isinstance(dt, Tensor):
        raise TypeError("dt must be a Python float (the constant time step), got a Tensor; "
                        "use DriveStep/SoftplusStep/GateStep for a data-dependent step")
    dt = float(dt)
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a finite number > 0 (the time step Δ), got {dt}")
    return dt


def _trailing(d: Tensor, h: Tensor) -> Tensor:
    """Append singleton axes to d so it broadcasts over the trailing state axes of h."""
    return d.reshape(*d.shape, *([1] * (h.dim() - d.dim())))


class ConstantStep(StepRule):
    """``Δ = dt`` for every token and coordinate."""

    reads_state = False

    def __init__(self, dt: float = 1.0) -> None:
        super().__init__()
        self.dt = _check_dt(dt)

    def forward(self, t: float, h: Tensor, drive: Drive) -> float:
        return self.dt

    def extra_repr(self) -> str:
        return f"dt={self.dt}"


class DriveStep(StepRule):
    """Data-dependent step read from the token's drive: ``Δ = dt · drive[key]`` (a gate in
    [0, 1], say), broadcast over trailing state axes. Independent of h, so the block keeps
    the fused scan paths (a minGRU's update gate)."""

    reads_state = False

    def __init__(self, key: str, dt: float = 1.0) -> None:
        super().__init__()
        if not isinstance(key, str) or not key:
            raise TypeError(f"DriveStep: key must be the name of a drive entry, got {key!r}")
        self.key, self.dt = key, _check_dt(dt)

    def forward(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        d = _trailing(drive[self.key], h)
        return d if self.dt == 1.0 else self.dt * d

    def extra_repr(self) -> str:
        return f"key={self.key!r}, dt={self.dt}"


class GateStep(StepRule):
    """Per-coordinate, state-dependent step ``Δ = dt · gate(t, h, drive)``, gate ∈ [0, 1]
    of shape (B, S) — the GRU's ``Δ(1 − s(h))``. ``gate`` is usually a Hamiltonian method."""

    reads_state = True

    def __init__(self, gate: Callable[[float, Tensor, Drive], Tensor], dt: float = 1.0) -> None:
        super().__init__()
        if not callable(gate):
            raise TypeError(f"GateStep: gate must be callable (t, h, drive) -> (B, S), got "
                            f"{type(gate).__name__}")
        self.gate, self.dt = gate, _check_dt(dt)

    def forward(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        return self.dt * self.gate(t, h, drive)

    def extra_repr(self) -> str:
        return f"gate={getattr(self.gate, '__qualname__', self.gate)}, dt={self.dt}"


class SoftplusStep(StepRule):
    """Mamba's learned time warp ``Δ = softplus(drive[key] + bias)`` (per channel, per token).

    ``drive[key]`` is the token's step pre-activation (B, D); ``bias`` (D,) is an optional
    offset (a tensor or ``nn.Parameter``, registered in the block through the spec;
    HJMamba folds ``dt_proj.bias`` into ``drive[key]`` and leaves it None). ``Δ`` broadcasts
    over trailing state axes: for a state (B, D, N) it is returned (B, D, 1). ``dt`` (the
    nominal step, used to scale noise) is 1."""

    reads_state = False
    dt = 1.0

    def __init__(self, bias: Tensor | None = None, key: str = "delta") -> None:
        super().__init__()
        if bias is not None and not isinstance(bias, nn.Parameter):
            self.register_buffer("bias", bias)
        else:
            self.bias = bias
        self.key = key

    def forward(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        d = drive[self.key]
        if self.bias is not None:
            d = d + self.bias
        return _trailing(F.softplus(d), h)

    def extra_repr(self) -> str:
        return f"key={self.key!r}"


# ----------------------------------------------------------------------------- the spec

class HJSpec(nn.Module):
    """Declarative description of a block as an HJ discretization, and part of its module tree.

    hamiltonian: the :class:`Hamiltonian`; viscosity: ε ≥ 0 (float, per-channel tensor —
    kept as a buffer — or ``nn.Parameter`` — learnable); step: a :class:`StepRule`
    (default ``ConstantStep(1.0)``); scheme: a name in :data:`hjseq.schemes.SCHEMES`.

    A block that sets ``self.spec = HJSpec(...)`` registers the spec as a submodule, so the
    parameters and buffers of the Hamiltonian, of the step rule and a learnable ε appear in
    the block's ``named_parameters()``/``state_dict()``, train, and follow ``.to()``. The
    scheme is checked against what the Hamiltonian declares here, when the spec is built.
    """

    def __init__(self, hamiltonian: Hamiltonian, viscosity: Viscosity = 0.0,
                 step: StepRule | None = None, scheme: str = "euler") -> None:
        super().__init__()
        if not isinstance(hamiltonian, Hamiltonian):
            raise TypeError("hamiltonian must be a hjseq.spec.Hamiltonian, got "
                            f"{type(hamiltonian).__name__}")
        step = ConstantStep() if step is None else step
        if not isinstance(step, StepRule):
            raise TypeError(f"step must be a StepRule (ConstantStep, DriveStep, GateStep, "
                            f"SoftplusStep), got {type(step).__name__}")
        get_scheme(scheme).check(hamiltonian)
        self.hamiltonian, self.step, self._scheme = hamiltonian, step, scheme
        self.viscosity = viscosity

    # The scheme is a name; re-checked when set, so a spec never holds one its
    # Hamiltonian cannot take.
    @property
    def scheme(self) -> str:
        return self._scheme

    @scheme.setter
    def scheme(self, name: str) -> None:
        get_scheme(name).check(self.hamiltonian)
        self._scheme = name

    def __setattr__(self, name: str, value: object) -> None:
        if name == "viscosity":
            self._set_viscosity(value)
            return
        if name == "hamiltonian" and "_scheme" in self.__dict__:
            if not isinstance(value, Hamiltonian):
                raise TypeError("hamiltonian must be a hjseq.spec.Hamiltonian, got "
                                f"{type(value).__name__}")
            get_scheme(self._scheme).check(value)
        super().__setattr__(name, value)

    def _set_viscosity(self, value: Viscosity) -> None:
        value = check_viscosity(value)
        for store in (self._parameters, self._buffers, self.__dict__):
            store.pop("viscosity", None)
        if isinstance(value, nn.Parameter):
            self.register_parameter("viscosity", value)
        elif isinstance(value, Tensor):
            self.register_buffer("viscosity", value)
        else:
            object.__setattr__(self, "viscosity", value)

    def validate(self) -> None:
        """Re-check the viscosity (a learnable ε may have been driven negative by training)."""
        check_viscosity(self.viscosity)

    @property
    def order(self) -> float:
        """Order of accuracy of the scheme (``math.inf`` for an exact one)."""
        return get_scheme(self.scheme).order

    @property
    def stochastic(self) -> bool:
        """True when ε is (possibly) nonzero, i.e. the characteristics carry noise."""
        v = self.viscosity
        return bool((v.detach() != 0).any()) if isinstance(v, Tensor) else v != 0

    def extra_repr(self) -> str:
        v = self.viscosity
        eps = f"tensor{tuple(v.shape)}" if isinstance(v, Tensor) else f"{v:g}"
        return f"scheme={self.scheme!r}, viscosity={eps}"
