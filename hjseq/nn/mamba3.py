"""``HJMamba3``: the Mamba-3 (SISO) block as a rotating linear Hamiltonian flow.

Per head the (P, N) state follows a linear flow whose input and readout turn with a
cumulative, data-dependent angle — a complex eigenvalue ``a + iω`` written in the frame
that co-rotates with the state (``RotatingSSM``):

    Ṡ = a S + x B̃ᵀ,   B̃ = R(φ)(B + b_B),  y = S C̃ + D x,  C̃ = R(φ)(C + b_C),
    φ_t = φ_{t−1} + Δ_t ω_t,  ω_t = π tanh(θ_t)      (R(φ) turns the pairs (2j, 2j+1), j < A)

with, per token (parameters and split as ``mamba_ssm.modules.mamba3.Mamba3``)::

    z, x, B, C, dd_dt, dd_A, trap, θ = split(in_proj(u))          no conv1d
    B, C = RMSNorm(B), RMSNorm(C)                                 (B_norm, C_norm)
    Δ = softplus(dd_dt + dt_bias);  a = −max(softplus(dd_A), A_floor)
    λ = σ(trap)                                                   the trapezoid weight
    S_t = e^{Δa} S_{t−1} + (1 − λ_t)Δ_t e^{Δa} x_{t−1}B̃_{t−1}ᵀ + λ_t Δ_t x_t B̃_tᵀ
    out = out_proj((S_t C̃_t + D x_t) · silu(z_t))                 (or a gated RMSNorm)

The update is the scheme ``exp_trapezoidal`` (``hjseq.schemes``: ``e^{Δa} S + Δ[(1 − λ)
e^{Δa} b_{t−1} + λ b_t]``, second order at λ = ½) applied to the rotating flow
``Ṡ = a S + x B̃ᵀ`` (``RotatingSSM``), with λ_t read from the drive; the block supplies
``b_{t−1} = x_{t−1} B̃_{t−1}ᵀ`` from the (k, v) part of its state (:meth:`previous_input`).
``trapezoidal=False`` is the scheme ``euler_b`` (λ = 1): Mamba-2's step on the rotating
state, which takes the engine's ``ssd`` path. The forward pass runs the fused op ``hjseq.ops.mamba3_siso`` (a closed-form kernel
registered in :mod:`hjseq.catalog`); ``backend="loop"`` runs the engine's reference loop
over the Hamiltonian, and ``characteristics``/``compare`` see the per-token ODE.

State: ``(angle_state (B, H, A), ssm_state (B, H, P, N), k_state (B, H, N), v_state
(B, H, P))`` — the op's 4-tuple (angle and ssm in float32, float64 for float64 inputs;
k and v in the input dtype). mamba-ssm's module keeps k_state as (B, 1, H, N).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import mamba3_siso
from ..ops._dtypes import accumulation_dtype
from ..ops._registry import BackendUnavailable
from ..ops.mamba3_siso.ref import TWO_PI, rotate_pairs
from ..spec import Drive, DriveStep, Hamiltonian, HJSpec
from .base import RecurrentBlock, State


def _turn(drive: Drive, X: Tensor) -> Tensor:
    """X (..., H, N) turned by the token's cumulative angle (drive ``cos``/``sin`` (..., H, A))."""
    return rotate_pairs(X, drive["cos"], drive["sin"])


class RotatingSSM(Hamiltonian):
    """``H = ⟨P, a ⊙ S + x B̃ᵀ⟩`` per head with ``B̃ = R(φ) B`` turned by the token's cumulative
    angle: the complex eigenvalue ``a + iω`` of Mamba-3 seen from the co-rotating frame
    (the readout turns C by the same angle). ``euler_b`` gives ``S ← e^{Δa} S + Δ x B̃ᵀ``,
    Mamba-3 at λ = 1. Drive: ``a`` (B, H), ``x`` (B, H, P), ``B`` (B, H, N) (biased, not yet
    turned), ``cos``/``sin`` (B, H, A)."""

    state_dims = 3

    def head_affine(self, t: float, drive: Drive) -> tuple[Tensor, Tensor, Tensor]:
        return drive["a"], drive["x"], _turn(drive, drive["B"])

    def dH_dh(self, t: float, h: Tensor, p: Tensor, drive: Drive) -> Tensor:
        return drive["a"][..., None, None] * p


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``w ⊙ x / sqrt(mean(x²) + eps)`` over the last axis, in float32 at least."""
    h = x.to(accumulation_dtype(x.dtype))
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.to(h.dtype)
            ).to(x.dtype)


class _RMSNorm(nn.Module):
    """mamba-ssm's ``RMSNorm`` (``layernorm_gated``) layout: a ``weight`` (d,); ``group``
    normalises groups of that many channels; ``forward(x, z)`` gates ``norm(x)·silu(z)``."""

    def __init__(self, d: int, eps: float = 1e-5, group: int | None = None,
                 **kw: Any) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, **kw))
        self.eps, self.group = eps, group

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        if self.group is None:
            y = _rms(x, self.weight, self.eps)
        else:
            shp = x.shape
            g = x.reshape(*shp[:-1], shp[-1] // self.group, self.group)
            y = _rms(g, torch.ones_like(self.weight[:self.group]), self.eps).reshape(shp)
            y = y * self.weight.to(y.dtype)
        return y if z is None else y * F.silu(z.to(y.dtype))


class HJMamba3(RecurrentBlock):
    """Mamba-3 SISO block, ``batch_first``: x (B, L, d_model) -> (B, L, d_model).

    Arguments as ``mamba_ssm``'s ``Mamba3`` (SISO: ``is_mimo`` must be False) plus
    ``trapezoidal`` (True: Mamba-3's learned λ; False: λ = 1), ``backend`` (one of
    ``hjseq.engine.BLOCK_BACKENDS``: the ``mamba3_siso`` backend, or "loop" for the
    engine's reference loop) and ``check_finite``. Parameter names and shapes are
    mamba-ssm's, so a ``Mamba3`` state dict loads."""

    state_names = ("angle_state", "ssm_state", "k_state", "v_state")
    state_free_tokens = True  # every token's drive is computed in prepare
    linear_readout = "C"

    def __init__(self, d_model: int, d_state: int = 128, expand: float = 2, headdim: int = 64,
                 ngroups: int = 1, rope_fraction: float = 0.5, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, A_floor: float = 1e-4,
                 is_outproj_norm: bool = False, is_mimo: bool = False, chunk_size: int = 64,
                 trapezoidal: bool = True, layer_idx: int | None = None, device: Any = None,
                 dtype: torch.dtype | None = None, backend: str = "auto",
                 check_finite: bool = False) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("headdim", headdim),
                        ("ngroups", ngroups), ("chunk_size", chunk_size)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"HJMamba3: {name} must be an int >= 1, got {v!r}")
        if is_mimo:
            raise ValueError("HJMamba3 is the SISO block; is_mimo=True (Mamba-3 MIMO) is not "
                             "implemented")
        if rope_fraction not in (0.5, 1.0):
            raise ValueError(f"HJMamba3: rope_fraction must be 0.5 or 1.0 (as Mamba3), got "
                             f"{rope_fraction!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"HJMamba3: need 0 < dt_min <= dt_max, got dt_min={dt_min}, "
                             f"dt_max={dt_max}")
        if not A_floor >= 0:
            raise ValueError(f"HJMamba3: A_floor must be >= 0, got {A_floor!r}")
        kw = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.expand, self.headdim = d_model, d_state, expand, headdim
        self.d_inner = int(expand * d_model)
        if self.d_inner < 1 or self.d_inner % headdim:
            raise ValueError(f"HJMamba3: expand * d_model = {self.d_inner} must be a positive "
                             f"multiple of headdim = {headdim}")
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"HJMamba3: ngroups = {ngroups} must divide the number of heads "
                             f"{self.nheads}")
        self.ngroups, self.chunk_size, self.A_floor = ngroups, chunk_size, float(A_floor)
        self.is_outproj_norm = bool(is_outproj_norm)
        self.layer_idx, self.input_size = layer_idx, d_model
        split = int(d_state * rope_fraction)
        split -= split % 2
        self.num_rope_angles = split // 2
        if self.num_rope_angles < 1:
            raise ValueError(f"HJMamba3: d_state = {d_state} leaves no rotary pair at "
                             f"rope_fraction = {rope_fraction}")
        self.check_finite = bool(check_finite)
        self._set_backend(backend)

        H, N, A = self.nheads, d_state, self.num_rope_angles
        d_in_proj = 2 * self.d_inner + 2 * N * ngroups + 3 * H + A
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=False, **kw)
        pdt = accumulation_dtype(dtype)
        # Mamba's init: softplus(dt_bias) log-uniform in [dt_min, dt_max]
        dt = torch.exp(torch.rand(H, device=device, dtype=pdt) * (math.log(dt_max)
                       - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_weight_decay = True
        self.B_bias = nn.Parameter(torch.ones(H, 1, N, device=device, dtype=pdt))
        self.C_bias = nn.Parameter(torch.ones(H, 1, N, device=device, dtype=pdt))
        self.B_norm = _RMSNorm(N, eps=1e-5, **kw)
        self.C_norm = _RMSNorm(N, eps=1e-5, **kw)
        self.D = nn.Parameter(torch.ones(H, device=device, dtype=pdt))
        self.D._no_weight_decay = True
        if self.is_outproj_norm:
            self.norm = _RMSNorm(self.d_inner, eps=1e-5, group=headdim, **kw)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **kw)
        self.spec = HJSpec(RotatingSSM(), viscosity=0.0, step=DriveStep("dt"),
                           scheme="exp_trapezoidal" if trapezoidal else "euler_b")

    @property
    def trapezoidal(self) -> bool:
        """Mamba-3's learned λ (the ``exp_trapezoidal`` scheme) or λ = 1 (``euler_b``)."""
        return self.spec.scheme == "exp_trapezoidal"

    def previous_input(self, drive: dict[str, Tensor]) -> Tensor:
        """``b_{t−1} = x_{t−1} B̃_{t−1}ᵀ`` (B, H, P, N), from the previous token's factors."""
        return drive["x_prev"][..., :, None] * drive["B_prev"][..., None, :]

    @property
    def scheme(self) -> str:
        return self.spec.scheme

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, nheads={self.nheads}, "
                f"headdim={self.headdim}, d_state={self.d_state}, ngroups={self.ngroups}, "
                f"rope_angles={self.num_rope_angles}, trapezoidal={self.trapezoidal}, "
                f"backend={self.backend!r}")

    # ------------------------------------------------------------------ state
    def reference_parameter(self) -> Tensor:
        return self.in_proj.weight

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        H, P, N = self.nheads, self.headdim, self.d_state
        return (H, self.num_rope_angles), (H, P, N), (H, N), (H, P)

    def state_dtypes(self, dtype: torch.dtype) -> tuple[torch.dtype, ...]:
        acc = accumulation_dtype(dtype)
        return acc, acc, dtype, dtype

    def flow_state(self, state: State) -> Tensor:
        return state[1]

    def replace_flow(self, state: State, h: Tensor) -> State:
        return state[0], h, state[2], state[3]

    # ------------------------------------------------------------------ projections
    def project(self, u: Tensor, time_steps: Tensor | None = None) -> dict[str, Tensor]:
        """in_proj and the per-token quantities of the ``mamba3_siso`` call (mamba-ssm's
        layouts, (B, L, ·) first): z, x (B, L, H, P); B, C (B, L, G, N) normalised; DT, ADT,
        trap (B, L, H) (trap before the sigmoid; λ = 1 sends it to +inf); angles
        (B, L, H, A) (the rates θ before π·tanh). ``time_steps`` (B, L) (irregular time)
        multiplies Δ, so the decay, the input weights and the angle advance all follow it."""
        Bsz, L, _ = u.shape
        H, P, N, G, A = (self.nheads, self.headdim, self.d_state, self.ngroups,
                         self.num_rope_angles)
        z, x, B, C, dd_dt, dd_A, trap, ang = torch.split(
            self.in_proj(u), [self.d_inner, self.d_inner, N * G, N * G, H, H, H, A], dim=-1)
        acc = accumulation_dtype(u.dtype)
        a = -F.softplus(dd_A.to(acc)).clamp(min=self.A_floor)
        DT = F.softplus(dd_dt.to(acc) + self.dt_bias.to(acc))
        if time_steps is not None:
            DT = DT * time_steps.to(acc)[..., None]
        if not self.trapezoidal:
            trap = torch.full_like(trap, float("inf"))
        return {"z": z.reshape(Bsz, L, H, P), "x": x.reshape(Bsz, L, H, P),
                "B": self.B_norm(B.reshape(Bsz, L, G, N)),
                "C": self.C_norm(C.reshape(Bsz, L, G, N)),
                "DT": DT, "A": a, "ADT": a * DT, "trap": trap,
                "angles": ang.to(acc)[:, :, None, :].expand(Bsz, L, H, A)}

    def op_args(self, pr: dict[str, Tensor]) -> dict[str, Any]:
        """``hjseq.ops.mamba3_siso``'s arguments from :meth:`project`'s output."""
        t = lambda X: X.transpose(1, 2)  # (B, L, H) -> (B, H, L)  # noqa: E731
        return dict(Q=pr["C"], K=pr["B"], V=pr["x"], ADT=t(pr["ADT"]), DT=t(pr["DT"]),
                    Trap=t(pr["trap"]), Q_bias=self.C_bias[:, 0], K_bias=self.B_bias[:, 0],
                    Angles=pr["angles"], D=self.D,
                    Z=None if self.is_outproj_norm else pr["z"], chunk_size=self.chunk_size)

    def output(self, y: Tensor, z: Tensor, dtype: torch.dtype) -> Tensor:
        """out_proj of the op's output y (B, L, H, P) (gated, or normed with z first)."""
        y = y.reshape(*y.shape[:2], self.d_inner)
        if self.is_outproj_norm:
            y = self.norm(y, z.reshape(*z.shape[:2], self.d_inner))
        return self.out_proj(y.to(dtype))

    # ------------------------------------------------------------------ irregular time
    def _check_time_path(self) -> None:
        # the drive's angle advance and trapezoid weight depend on Δ, and the engine scales
        # only the step rule's Δ by dt on its own paths: irregular time runs on the op
        if self.backend == "loop" or (self.training and self.spec.stochastic):
            raise ValueError("HJMamba3: irregular time (dt) runs through the fused "
                             "mamba3_siso op only; use backend='auto' (or an op backend) "
                             "and no viscosity noise")

    def forward(self, x: Tensor, initial_state: State | None = None,
                return_final_state: bool = False, dt: Tensor | None = None):
        """As :meth:`RecurrentBlock.forward`; ``dt`` (B, L) multiplies Δ (decay, input
        weights and angle advance), through the fused op."""
        if dt is not None:
            self._check_time_path()
        return super().forward(x, initial_state, return_final_state, dt)

    def step(self, x_t: Tensor, state: State | None = None,
             dt: Tensor | None = None) -> tuple[Tensor, State]:
        """As :meth:`RecurrentBlock.step`; ``dt`` (B,) is the token's sampling interval."""
        if dt is not None:
            self._check_time_path()
        return super().step(x_t, state, dt)

    # ------------------------------------------------------------------ engine hooks
    def prepare(self, x: Tensor, state: State
                ) -> tuple[dict[str, Tensor], dict[str, Tensor], State]:
        """The drive of every token: the cumulative angle from the state's, the biased
        B, C (C turned: the readout's), Δ, a, λ, and the previous token's x and B̃ (from
        the state's k, v for the first token). The returned state holds the final angle,
        k and v (the ssm part is the flow's)."""
        angle, ssm, k_state, v_state = state
        pr = self.project(x)
        acc = pr["DT"].dtype
        H = self.nheads
        rep = H // self.ngroups
        phi = angle[:, None] + (torch.tanh(pr["angles"]) * math.pi * pr["DT"][..., None]
                                ).cumsum(1)                                # (B, L, H, A)
        cos, sin = torch.cos(phi), torch.sin(phi)
        Bb = pr["B"].to(acc).repeat_interleave(rep, dim=2) + self.B_bias[:, 0].to(acc)
        Cb = pr["C"].to(acc).repeat_interleave(rep, dim=2) + self.C_bias[:, 0].to(acc)
        Bt = rotate_pairs(Bb, cos, sin)
        xs = pr["x"].to(acc)
        seq = {"x": xs, "B": Bb, "C": rotate_pairs(Cb, cos, sin), "cos": cos, "sin": sin,
               "a": pr["A"], "dt": pr["DT"],
               "trap": torch.sigmoid(pr["trap"].to(acc))[..., None, None],  # λ (B, L, H, 1, 1)
               "x_prev": torch.cat((v_state.to(acc)[:, None], xs[:, :-1]), dim=1),
               "B_prev": torch.cat((k_state.to(acc)[:, None], Bt[:, :-1]), dim=1),
               "z": pr["z"]}
        last = phi[:, -1]
        new = (last - TWO_PI * torch.floor(last / TWO_PI), ssm,
               Bt[:, -1].to(k_state.dtype), pr["x"][:, -1].to(v_state.dtype))
        return seq, {}, new

    def finish(self, ys: Tensor, seq: dict[str, Tensor]) -> Tensor:
        """(S C̃ (B, L, H, P)) -> + D x, gate, out_proj."""
        y = ys + self.D.to(ys.dtype)[:, None] * seq["x"]
        z = seq["z"]
        if not self.is_outproj_norm:
            y = y * F.silu(z.to(y.dtype))
        return self.output(y, z, z.dtype)


def mamba3_kernel(block: HJMamba3, x: Tensor, state: State, noise: Tensor | None,
                  backend: str, time_steps: Tensor | None = None) -> tuple[Tensor, State]:
    """Closed-form kernel of exactly HJMamba3 (``RotatingSSM`` under ``exp_trapezoidal`` or
    ``euler_b``; registered in :mod:`hjseq.catalog`): the fused op
    ``hjseq.ops.mamba3_siso`` from the block's state. With noise (ε > 0 while training) it
    declines: the engine's ``linear_scan`` path adds the noise to the state."""
    if noise is not None:
        raise BackendUnavailable("mamba3_siso has no noise term (viscosity > 0)")
    pr = block.project(x, time_steps)
    args = block.op_args(pr)
    y, *final = mamba3_siso(**args, Input_States=tuple(state), return_final_states=True,
                            backend=backend)
    return block.output(y, pr["z"], x.dtype), tuple(final)


mamba3_kernel.supports_time_steps = True  # irregular time: Δ·dt_k inside project()


__all__ = ["HJMamba3", "RotatingSSM", "mamba3_kernel"]
