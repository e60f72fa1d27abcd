"""``HJMamba2``: the Mamba-2 (SSD) block as a discretized matrix-linear Hamiltonian flow.

Per head h the state is a matrix ``S_h ∈ R^{P×N}`` (P = headdim, N = d_state) following
``Ṡ = a_h S + x Bᵀ`` (``H = ⟨P, a S + x Bᵀ⟩``, ``hamiltonians.HeadLinearSSM``) with one decay
rate ``a_h = −exp(A_log_h)`` per head, the token's input held over the step and Mamba's learned
time warp ``Δ = softplus(dt + dt_bias)`` per head and token (``SoftplusStep``):

    z, xBC, dt = split(in_proj(u))                          (d_ssm, d_ssm + 2GN, H)
    x, B, C = split(silu(causal_depthwise_conv(xBC)))       x (H, P); B, C (G, N), head h reads
                                                            group h // (H/G)
    S_k = e^{Δ_k a} S_{k−1} + β_k x_k B_kᵀ                 β = Δ ("euler_b", Mamba-2's) or
                                                            Δ φ₁(Δa) ("zoh", the exact flow)
    y_k = S_k C_k + D x_k;  out = out_proj(RMSNorm_G(y ⊙ silu(z)))

The readout is exactly ``y = S·C`` (``linear_readout = "C"``), so the engine runs the block
through the chunked ``ssd_scan`` op (``fused_path() == "ssd"``) with no kernel of its own.
Parameter names and shapes are those of ``mamba_ssm.modules.mamba2.Mamba2`` and of HF's
``Mamba2Mixer`` (``in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj``), so their state
dicts load and give the same outputs. ``d_ssm < d_inner`` adds Mamba-2's gated MLP lanes
(``silu(z0)·x0``, in front of in_proj's output).

State: ``(conv_state, ssm_state)``: conv_state (B, d_ssm + 2GN, d_conv − 1), the last pre-conv
xBC inputs, in the input dtype; ssm_state (B, H, P, N) in float32 (float64 for float64).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import engine
from ..hamiltonians import HeadLinearSSM
from ..ops import causal_conv1d, selective_state_update
from ..ops._dtypes import accumulation_dtype
from ..schemes import schemes_for
from ..spec import Drive, HJSpec, SoftplusStep
from .base import RecurrentBlock, State


class ClampedSoftplusStep(SoftplusStep):
    """``Δ = clamp(softplus(drive[key]), lo, hi)`` (Mamba-2's ``dt_limit``)."""

    def __init__(self, limit: tuple[float, float], key: str = "dt") -> None:
        super().__init__(key=key)
        self.limit = (float(limit[0]), float(limit[1]))

    def forward(self, t: float, h: Tensor, drive: Drive) -> Tensor:
        return super().forward(t, h, drive).clamp(*self.limit)


class GatedRMSNorm(nn.Module):
    """Mamba-2's gated RMSNorm over groups of ``group_size`` channels, in float32:
    ``w ⊙ g / rms(g)`` with ``g = x ⊙ silu(z)`` (``norm_before_gate=False``, Mamba-2's and
    HF's), or ``(w ⊙ x / rms(x)) ⊙ silu(z)``. x, z (..., d) -> (..., d) in x's dtype."""

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))
        self.eps, self.group_size = eps, group_size or d
        self.norm_before_gate = norm_before_gate

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        dtype, acc = x.dtype, accumulation_dtype(x.dtype)
        h = x.to(acc)
        gate = None if z is None else F.silu(z.to(acc))
        if gate is not None and not self.norm_before_gate:
            h = h * gate
        w, d = self.weight.to(acc), h.shape[-1]
        if self.group_size == d:
            h = F.rms_norm(h, (d,), w, eps=self.eps)
        else:
            h = F.rms_norm(h.unflatten(-1, (-1, self.group_size)), (self.group_size,),
                           eps=self.eps).flatten(-2) * w
        if gate is not None and self.norm_before_gate:
            h = h * gate
        return h.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}"


class HJMamba2(RecurrentBlock):
    """Mamba-2 block, ``batch_first``: u (B, L, d_model) -> (B, L, d_model).

    Arguments as ``mamba_ssm``'s ``Mamba2`` plus ``scheme`` ("euler_b" — Mamba-2's — "zoh", or
    any other scheme ``HeadLinearSSM`` takes), ``eps`` (viscosity: noise √(2εΔ)ξ on S while
    training), ``norm_eps`` (the gated RMSNorm's ε; HF's ``layer_norm_epsilon``), ``backend``
    (one of ``hjseq.engine.BLOCK_BACKENDS``; "loop" runs the engine's reference loop) and
    ``check_finite``. ``chunk_size`` is kept for checkpoint compatibility; the chunked scan's
    chunk only changes round-off."""

    state_names = ("conv_state", "ssm_state")
    linear_readout = "C"

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4,
                 conv_init: float | None = None, expand: int = 2, headdim: int = 64,
                 d_ssm: int | None = None, ngroups: int = 1,
                 A_init_range: tuple[float, float] = (1, 16), D_has_hdim: bool = False,
                 rmsnorm: bool = True, norm_before_gate: bool = False, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple[float, float] = (0.0, float("inf")), bias: bool = False,
                 conv_bias: bool = True, chunk_size: int = 256, layer_idx: int | None = None,
                 scheme: str = "euler_b", eps: float = 0.0, norm_eps: float = 1e-5,
                 device: Any = None, dtype: torch.dtype | None = None, backend: str = "auto",
                 check_finite: bool = False) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv),
                        ("headdim", headdim), ("ngroups", ngroups), ("chunk_size", chunk_size)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if scheme not in schemes_for(HeadLinearSSM):
            raise ValueError(f"scheme must be one of {schemes_for(HeadLinearSSM)} ('euler_b' is "
                             f"Mamba-2's), got {scheme!r}")
        d_inner = int(expand * d_model)
        d_ssm = d_inner if d_ssm is None else d_ssm
        if not (isinstance(d_ssm, int) and 1 <= d_ssm <= d_inner and d_ssm % headdim == 0):
            raise ValueError(f"d_ssm must be an int in [1, d_inner={d_inner}] divisible by "
                             f"headdim={headdim}, got {d_ssm!r}")
        nheads = d_ssm // headdim
        if nheads % ngroups or d_ssm % ngroups:
            raise ValueError(f"ngroups={ngroups} must divide the number of heads "
                             f"(d_ssm / headdim = {nheads})")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be (lo, hi) with 0 < lo <= hi, got {A_init_range}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        lo, hi = (float(v) for v in dt_limit)
        if not 0 <= lo < hi:
            raise ValueError(f"dt_limit must be (lo, hi) with 0 <= lo < hi, got {dt_limit}")
        kw = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.d_ssm, self.headdim, self.nheads = d_inner, d_ssm, headdim, nheads
        self.ngroups, self.D_has_hdim, self.rmsnorm = ngroups, D_has_hdim, rmsnorm
        self.dt_limit, self.chunk_size, self.layer_idx = (lo, hi), chunk_size, layer_idx
        self.d_mlp = d_inner - d_ssm
        self.conv_dim = d_ssm + 2 * ngroups * d_state
        self.input_size = d_model
        self.check_finite = bool(check_finite)
        self._set_backend(backend)

        # in_proj order: [z0, x0, z, xBC, dt] (z0, x0: the gated-MLP lanes when d_ssm < d_inner)
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads,
                                 bias=bias, **kw)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv,
                                groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias, **kw)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        # Mamba-2's init: softplus(dt_bias) log-uniform in [dt_min, dt_max]; A uniform in
        # A_init_range (A_log in the block's dtype, as mamba_ssm); D = 1 in float32.
        dt = torch.exp(torch.rand(nheads, **kw) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype))
        pdt = accumulation_dtype(dtype)
        self.D = nn.Parameter(torch.ones(d_ssm if D_has_hdim else nheads, dtype=pdt,
                                         device=device))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        if rmsnorm:
            self.norm = GatedRMSNorm(d_ssm, eps=norm_eps, group_size=d_ssm // ngroups,
                                     norm_before_gate=norm_before_gate, **kw)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **kw)
        # dt_bias is folded into drive["dt"] by prepare(), so the state dict keeps
        # mamba_ssm's keys and the step rule is plain softplus (clamped to dt_limit if set)
        step = SoftplusStep(key="dt") if (lo, hi) == (0.0, math.inf) \
            else ClampedSoftplusStep((lo, hi))
        self.spec = HJSpec(HeadLinearSSM(), viscosity=eps, step=step, scheme=scheme)

    @property
    def scheme(self) -> str:
        return self.spec.scheme

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ssm={self.d_ssm}, nheads={self.nheads}, "
                f"headdim={self.headdim}, d_state={self.d_state}, ngroups={self.ngroups}, "
                f"d_conv={self.d_conv}, scheme={self.scheme!r}, backend={self.backend!r}")

    # ------------------------------------------------------------------ state
    def reference_parameter(self) -> Tensor:
        """``in_proj.weight``: inputs match it (D stays float32 in low precision)."""
        return self.in_proj.weight

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.conv_dim, self.d_conv - 1),
                (self.nheads, self.headdim, self.d_state))

    def state_dtypes(self, dtype: torch.dtype) -> tuple[torch.dtype, ...]:
        """conv_state in the input dtype; ssm_state in float32 (float64 for float64)."""
        return dtype, accumulation_dtype(dtype)

    # ------------------------------------------------------------------ engine hooks
    def _op_backend(self) -> str:
        return "ref" if self.backend == "loop" else self.backend

    def _split_proj(self, zxbcdt: Tensor) -> list[Tensor]:
        return list(zxbcdt.split([self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim,
                                  self.nheads], dim=-1))

    def _D(self, acc: torch.dtype) -> Tensor:
        D = self.D.to(acc)
        return D.view(self.nheads, self.headdim) if self.D_has_hdim else D[:, None]

    def prepare(self, x: Tensor, state: State
                ) -> tuple[dict[str, Tensor], dict[str, Tensor], State]:
        """in_proj, causal conv + SiLU over xBC (advancing conv_state), Δ's pre-activation
        ``dt + dt_bias`` (float32). seq: x (B, L, H, P), B, C (B, L, G, N), dt (B, L, H), z
        and the MLP lanes; const: a = −exp(A_log) (H,)."""
        conv_state, ssm_state = state
        b, l, _ = x.shape
        acc = accumulation_dtype(x.dtype)
        z0, x0, z, xBC, dt = self._split_proj(self.in_proj(x))
        xBC, conv_state = causal_conv1d(
            xBC.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu",
            initial_state=conv_state, return_final_state=True, backend=self._op_backend())
        xs, B, C = xBC.transpose(1, 2).split(
            [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        G, N = self.ngroups, self.d_state
        seq = {"x": xs.reshape(b, l, self.nheads, self.headdim), "B": B.reshape(b, l, G, N),
               "C": C.reshape(b, l, G, N), "dt": dt.to(acc) + self.dt_bias.to(acc),
               "z": z, "z0": z0, "x0": x0}
        return seq, {"a": -torch.exp(self.A_log.to(acc))}, (conv_state, ssm_state)

    def flow_state(self, state: State) -> Tensor:
        return state[1]

    def replace_flow(self, state: State, h: Tensor) -> State:
        return state[0], h

    def finish(self, ys: Tensor, seq: dict[str, Tensor]) -> Tensor:
        """``out_proj(norm(y + D x, z))`` (with the MLP lanes in front); ys (B, L, H, P)."""
        xs, z = seq["x"], seq["z"]
        acc = accumulation_dtype(xs.dtype)
        y = torch.addcmul(ys.to(acc), xs.to(acc), self._D(acc)).flatten(-2)
        y = self.norm(y, z.to(acc)) if self.rmsnorm else y * F.silu(z.to(acc))
        if self.d_mlp:
            y = torch.cat([F.silu(seq["z0"].to(acc)) * seq["x0"].to(acc), y], dim=-1)
        return self.out_proj(y.to(z.dtype))

    # ------------------------------------------------------------------ decoding
    def step(self, x_t: Tensor, state: State | None = None,
             dt: Tensor | None = None) -> tuple[Tensor, State]:
        """One token u_t (B, d_model) -> ``(y_t, (conv_state, ssm_state))`` in O(1): the conv
        window, then ``hjseq.ops.selective_state_update`` in the heads layout. Its compiled
        backends are forward-only, so when autograd needs the step the op's "ref" backend
        runs (decode under ``torch.no_grad()`` for speed). Equal to the engine's step, which
        runs instead for irregular time ``dt`` (B,), schemes other than euler_b/zoh, training
        with ε > 0 and ``backend="loop"``."""
        if self.backend == "loop" or (self.training and self.spec.stochastic) or \
                dt is not None or self.scheme not in ("euler_b", "zoh") or \
                not isinstance(x_t, Tensor) or x_t.dim() != 2:
            return engine.step(self, x_t, state, dt)
        self.check_input(x_t[:, None])
        conv_state, ssm_state = (self.zero_state(x_t[:, None]) if state is None
                                 else self.check_state(state, x_t[:, None]))
        b, acc = x_t.shape[0], accumulation_dtype(x_t.dtype)
        z0, x0, z, xBC, dt = self._split_proj(self.in_proj(x_t))
        window = torch.cat([conv_state, xBC[:, :, None]], dim=-1)          # (B, conv_dim, W)
        xBC = (window * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        xs, B, C = F.silu(xBC).split(
            [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        delta = self.spec.step(0.0, ssm_state[:, :, 0, 0],                 # Δ (B, H)
                               {"dt": dt.to(acc) + self.dt_bias.to(acc)})
        H, P, N = self.nheads, self.headdim, self.d_state
        a = -torch.exp(self.A_log.to(acc))
        backend = self._op_backend()
        if backend == "auto" and torch.is_grad_enabled() and (
                x_t.requires_grad or ssm_state.requires_grad or conv_state.requires_grad
                or any(p.requires_grad for p in self.parameters())):
            backend = "ref"  # differentiable; the compiled kernels are forward-only
        y, ssm_state = selective_state_update(
            ssm_state, xs.reshape(b, H, P).to(acc), delta[:, :, None].expand(b, H, P),
            a[:, None, None].expand(H, P, N), B.reshape(b, self.ngroups, N).to(acc),
            C.reshape(b, self.ngroups, N).to(acc), self._D(acc).expand(H, P),
            scheme=self.scheme, backend=backend)
        y = y.flatten(-2)
        y = self.norm(y, z.to(acc)) if self.rmsnorm else y * F.silu(z.to(acc))
        if self.d_mlp:
            y = torch.cat([F.silu(z0.to(acc)) * x0.to(acc), y], dim=-1)
        return self.out_proj(y.to(x_t.dtype)), (window[:, :, 1:], ssm_state)


__all__ = ["HJMamba2", "GatedRMSNorm", "ClampedSoftplusStep"]
