"""``HJMamba``: the Mamba (S6) block as a discretized linear Hamiltonian flow.

Per channel d and state index n the SSM state follows ``ḣ_{dn} = A_{dn} h_{dn} + B_n u_d``
(Hamiltonian ``H = p·(A h + B u)``, ``hamiltonians.LinearSSM``) with the input held over a
token and a learned, data-dependent time warp ``Δ = softplus(dt_proj(dt))`` (``SoftplusStep``):

    xz = in_proj(x);  x', z = split(xz)                           (B, L, 2·d_inner)
    u  = silu(causal_depthwise_conv(x'))                          (B, L, d_inner)
    dt, B, C = split(x_proj(u))                                   (dt_rank, N, N)
    Δ  = softplus(W_dt dt + b_dt)                                 (B, L, d_inner)
    h_k = exp(Δ_k A) h_{k−1} + B̄_k u_k                          (B, d_inner, N)
         B̄ = Δ B (scheme "euler_b", Mamba's)  or  (exp(ΔA) − 1)/A · B ("zoh", exact flow)
    y_k = C_k·h_k + D u_k;   out = out_proj(y ⊙ silu(z))        (B, L, d_model)

with ``A = −exp(A_log)``. Parameter names, shapes and init are those of
``mamba_ssm.modules.mamba_simple.Mamba`` (``in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj``), so a Mamba ``state_dict`` loads and, with ``scheme="euler_b"``, gives the same
outputs. The conv and the scan go through ``hjseq.ops.causal_conv1d`` / ``selective_scan``.

State: ``(conv_state, ssm_state)`` with conv_state (B, d_inner, d_conv − 1) — the last
d_conv − 1 *pre-conv* inputs (mamba_ssm keeps d_conv of them: its ``conv_state[..., 1:]``
is ours) — and ssm_state (B, d_inner, d_state) in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hamiltonians import LinearSSM
from ..ops import causal_conv1d, selective_scan
from ..ops._dtypes import accumulation_dtype
from ..ops._registry import BackendUnavailable
from ..schemes import schemes_for
from ..spec import HJSpec, SoftplusStep
from .base import RecurrentBlock, State


class HJMamba(RecurrentBlock):
    """Mamba block, ``batch_first``: x (B, L, d_model) -> (B, L, d_model).

    Arguments as ``mamba_ssm``'s ``Mamba`` plus ``scheme`` ("euler_b" — Mamba's — "zoh",
    or any other scheme ``LinearSSM`` takes: those run the engine's fused ``linear_scan``
    path), ``backend`` (one of ``hjseq.engine.BLOCK_BACKENDS``: an op backend, or "loop"
    for the engine's reference loop over the Hamiltonian) and ``check_finite``."""

    state_names = ("conv_state", "ssm_state")
    state_free_tokens = True  # token_drive casts and folds Δ's bias; readout is tokenwise

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, scheme: str = "euler_b",
                 layer_idx: int | None = None, device: Any = None,
                 dtype: torch.dtype | None = None, backend: str = "auto",
                 check_finite: bool = False) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if scheme not in schemes_for(LinearSSM):
            raise ValueError(f"scheme must be one of {schemes_for(LinearSSM)} ('euler_b' is "
                             f"Mamba's), got {scheme!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        kw = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        if self.d_inner < 1:
            raise ValueError(f"expand * d_model must be >= 1, got {expand} * {d_model}")
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        if not (isinstance(self.dt_rank, int) and self.dt_rank >= 1):
            raise ValueError(f"dt_rank must be 'auto' or an int >= 1, got {dt_rank!r}")
        self.layer_idx = layer_idx
        self.input_size = d_model
        self.check_finite = bool(check_finite)
        self._set_backend(backend)

        D, N = self.d_inner, d_state
        self.in_proj = nn.Linear(d_model, 2 * D, bias=bias, **kw)
        self.conv1d = nn.Conv1d(D, D, kernel_size=d_conv, groups=D, padding=d_conv - 1,
                                bias=conv_bias, **kw)
        self.x_proj = nn.Linear(D, self.dt_rank + 2 * N, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, D, bias=True, **kw)
        # Mamba's init: dt_proj.weight keeps the variance of Δ; softplus(dt_proj.bias) is
        # log-uniform in [dt_min, dt_max] (bias = inverse softplus of that Δ).
        std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(D, **kw) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        # S4D-real init A = −(1, 2, ..., N) per channel; A_log and D kept in fp32 as Mamba does
        # (float64 when the block is float64).
        pdt = accumulation_dtype(dtype)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=pdt, device=device)
                                            ).repeat(D, 1))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(D, dtype=pdt, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(D, d_model, bias=bias, **kw)

        # The bias of Δ is folded into drive["delta"] by token_drive(), so the step rule is
        # plain softplus of the token's drive.
        self.spec = HJSpec(LinearSSM(), viscosity=0.0, step=SoftplusStep(), scheme=scheme)

    @property
    def scheme(self) -> str:
        return self.spec.scheme

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, scheme={self.scheme!r}, "
                f"backend={self.backend!r}")

    # ------------------------------------------------------------------ state
    def reference_parameter(self) -> Tensor:
        """``in_proj.weight``: inputs match it (A_log and D stay float32 in low precision)."""
        return self.in_proj.weight

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return (self.d_inner, self.d_conv - 1), (self.d_inner, self.d_state)

    def state_dtypes(self, dtype: torch.dtype) -> tuple[torch.dtype, ...]:
        """conv_state in the input dtype; ssm_state in float32 (float64 for float64)."""
        return dtype, accumulation_dtype(dtype)

    # ------------------------------------------------------------------ engine hooks
    def _op_backend(self) -> str:
        return "ref" if self.backend == "loop" else self.backend

    def prepare(self, x: Tensor, state: State
                ) -> tuple[dict[str, Tensor], dict[str, Tensor], State]:
        """in_proj, causal conv + SiLU (advancing conv_state), x_proj, Δ's projection."""
        conv_state, ssm_state = state
        acc = accumulation_dtype(x.dtype)
        xi, z = self.in_proj(x).chunk(2, dim=-1)                           # (B, L, D) each
        u, conv_state = causal_conv1d(
            xi.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu",
            initial_state=conv_state, return_final_state=True, backend=self._op_backend())
        u = u.transpose(1, 2)                                              # (B, L, D)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # as Mamba: u, Δ's projection, B, C, z in the input dtype; A, D, Δ's bias in acc
        seq = {"u": u, "delta": F.linear(dt, self.dt_proj.weight), "B": B, "C": C, "z": z}
        const = {"A": -torch.exp(self.A_log.to(acc)), "D": self.D.to(acc),
                 "delta_bias": self.dt_proj.bias.to(acc)}
        return seq, const, (conv_state, ssm_state)

    def token_drive(self, drive: dict[str, Tensor], state: State) -> dict[str, Tensor]:
        """Token drive in float32/64 with Δ's bias folded in: ``delta = W_dt dt + b_dt``."""
        acc = drive["A"].dtype
        d = {k: drive[k].to(acc) for k in ("u", "B", "C")}
        d["delta"] = drive["delta"].to(acc) + drive["delta_bias"]
        d["A"], d["D"] = drive["A"], drive["D"]
        return d

    def flow_state(self, state: State) -> Tensor:
        return state[1]

    def replace_flow(self, state: State, h: Tensor) -> State:
        return state[0], h

    def readout(self, h: Tensor, drive: dict[str, Tensor], state: State) -> tuple[Tensor, State]:
        y = torch.einsum("bdn,bn->bd", h, drive["C"]) + drive["D"] * drive["u"]
        return y, (state[0], h)

    def finish(self, ys: Tensor, seq: dict[str, Tensor]) -> Tensor:
        z = seq["z"]
        return self.out_proj((ys * F.silu(z.to(ys.dtype))).to(z.dtype))


def selective_scan_kernel(block: HJMamba, x: Tensor, state: State, noise: Tensor | None,
                          backend: str, time_steps: Tensor | None = None
                          ) -> tuple[Tensor, State]:
    """Closed-form kernel of exactly HJMamba with ``LinearSSM`` under ``euler_b``/``zoh``
    (registered in :mod:`hjseq.catalog`): its drive through ``hjseq.ops.selective_scan``.
    With noise (ε > 0 while training) it declines: the engine's ``linear_scan`` path adds
    the noise to the state."""
    if noise is not None:
        raise BackendUnavailable("selective_scan has no noise term (viscosity > 0)")
    seq, const, (conv_state, ssm_state) = block.prepare(x, state)
    tr = lambda t: t.transpose(1, 2)  # (B, L, ·) -> (B, ·, L), mamba-ssm's layout
    delta, bias, softplus = seq["delta"], const["delta_bias"], True
    if time_steps is not None:  # irregular time: Δ = softplus(·) · dt_k, applied here
        acc = const["A"].dtype
        delta = F.softplus(delta.to(acc) + bias) * time_steps.to(acc).unsqueeze(-1)
        bias, softplus = None, False
    y, h = selective_scan(tr(seq["u"]), tr(delta), const["A"], tr(seq["B"]),
                          tr(seq["C"]), const["D"], z=tr(seq["z"]),
                          delta_bias=bias, delta_softplus=softplus,
                          initial_state=ssm_state, return_final_state=True,
                          scheme=block.scheme, backend=backend)
    return block.out_proj(tr(y).to(x.dtype)), (conv_state, h)


selective_scan_kernel.supports_time_steps = True

