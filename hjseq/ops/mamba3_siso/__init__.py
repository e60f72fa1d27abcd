"""``mamba3_siso``: Mamba-3's SISO scan (exponential-trapezoidal step, data-dependent rotary
state), the call of mamba-ssm's ``mamba3_siso_combined``; ``ref.py`` is the definition.

Backends: ``ref`` (the sequential loop); ``cpu`` (fused C++ passes for the angles, rotation,
biases and gate around Mamba-2's chunked ``ssd_scan`` C++ kernel; cpu.py); ``triton`` (torch
preprocessing around ``ssd_scan``'s Triton kernels); both reduce to one SSD scan as
chunked.py explains; ``mamba`` (mamba-ssm's own kernels, CUDA). ``mamba3_siso_step`` is one
decoding step (O(1) per token).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_cu_seqlens, check_tensor
from .._dispatch import dispatch
from .._dtypes import accumulation_dtype
from .._registry import register
from ..ssd.checks import check_chunk_size
from .ref import run_sequence

OP = "mamba3_siso"
register(OP, "ref", "hjseq.ops.mamba3_siso.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.mamba3_siso.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.mamba3_siso.triton", devices=("cuda", "cpu"))
register(OP, "mamba", "hjseq.ops.mamba3_siso.mamba", devices=("cuda",))

__all__ = ["mamba3_siso", "mamba3_siso_step"]

States = tuple[Tensor, Tensor, Tensor, Tensor]


def _check_values(op: str, ADT: Tensor, DT: Tensor, Trap: Tensor) -> None:
    """No NaN anywhere; DT finite; ADT ≤ +∞ excluded (−∞ is a full reset, α = 0); Trap may
    be ±∞ (λ = σ(Trap) = 1 or 0)."""
    if torch.compiler.is_compiling():
        return
    for name, X in (("ADT", ADT), ("DT", DT), ("Trap", Trap)):
        if bool(torch.isnan(X).any()):
            raise ValueError(f"{op}: {name} contains NaN")
    if not bool(torch.isfinite(DT).all()):
        raise ValueError(f"{op}: DT contains ±inf (the step Δ must be finite)")
    if bool((ADT == float("inf")).any()):
        raise ValueError(f"{op}: ADT contains +inf (only −inf, a full reset, is allowed)")


def _check_common(op: str, Q: Tensor, K: Tensor, V: Tensor, lead: tuple, Q_bias: Tensor,
                  K_bias: Tensor, Angles: Tensor, D: Tensor | None, Z: Tensor | None,
                  tok: str) -> tuple[int, int, int, int, int]:
    """Shapes shared by the scan and the step; ``lead`` is (b, l) or (b,). Returns
    (h_qk, n, h, p, a)."""
    nl = len(lead)
    check_tensor(op, "Q", Q, (*lead, None, None), f"{tok}h_qk, n)")
    hq, n = Q.shape[nl], Q.shape[nl + 1]
    dev = Q.device
    check_tensor(op, "K", K, tuple(Q.shape), f"{tok}h_qk, n) like Q", device=dev)
    check_tensor(op, "V", V, (*lead, None, None), f"{tok}h, p)", device=dev)
    h, p = V.shape[nl], V.shape[nl + 1]
    if h % hq:
        raise ValueError(f"{op}: the V heads h = {h} must be a multiple of the Q/K heads "
                         f"h_qk = {hq} (GQA: head i reads Q/K head i // (h // h_qk))")
    if n % 2:
        raise ValueError(f"{op}: the Q/K head dim n = {n} must be even (rotary pairs)")
    check_tensor(op, "Q_bias", Q_bias, (h, n), "(h, n)", device=dev)
    check_tensor(op, "K_bias", K_bias, (h, n), "(h, n)", device=dev)
    check_tensor(op, "Angles", Angles, (*lead, h, None), f"{tok}h, a)", device=dev)
    a = Angles.shape[-1]
    if not 1 <= a <= n // 2:
        raise ValueError(f"{op}: Angles has a = {a} rotary pairs; need 1 <= a <= n/2 = "
                         f"{n // 2}")
    if D is not None:
        check_tensor(op, "D", D, (h,), "(h,)", device=dev)
    if Z is not None:
        check_tensor(op, "Z", Z, tuple(V.shape), f"{tok}h, p) like V", device=dev)
    return hq, n, h, p, a


def _check_states(op: str, states: object, nseq: int, h: int, p: int, n: int, a: int,
                  dev: torch.device) -> None:
    if states is None:
        return
    if not isinstance(states, (tuple, list)) or len(states) != 4:
        raise TypeError(f"{op}: Input_States must be a 4-tuple (angle (s, h, a), ssm "
                        f"(s, h, p, n), k (s, h, n), v (s, h, p)) or None, got "
                        f"{type(states).__name__}")
    for name, X, shape, dims in (("angle", states[0], (nseq, h, a), "(s, h, a)"),
                                 ("ssm", states[1], (nseq, h, p, n), "(s, h, p, n)"),
                                 ("k", states[2], (nseq, h, n), "(s, h, n)"),
                                 ("v", states[3], (nseq, h, p), "(s, h, p)")):
        check_tensor(op, f"Input_States {name} state", X, shape, dims, device=dev)


def validate(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, Input_States, chunk_size,
             cu_seqlens) -> None:
    op = OP
    check_tensor(op, "Q", Q, (None, None, None, None), "(b, l, h_qk, n)")
    batch, L = Q.shape[:2]
    hq, n, h, p, a = _check_common(op, Q, K, V, (batch, L), Q_bias, K_bias, Angles, D, Z,
                                   "(b, l, ")
    for name, X in (("ADT", ADT), ("DT", DT), ("Trap", Trap)):
        check_tensor(op, name, X, (batch, h, L), "(b, h, l)", device=Q.device)
    nseq = batch
    if cu_seqlens is not None:
        nseq = check_cu_seqlens(op, cu_seqlens, batch, L)
        if cu_seqlens.device != Q.device:
            raise ValueError(f"{op}: cu_seqlens is on {cu_seqlens.device} but Q is on "
                             f"{Q.device}; move it with .to({str(Q.device)!r})")
        if not torch.compiler.is_compiling() and bool((cu_seqlens[1:] == cu_seqlens[:-1]).any()):
            raise ValueError(f"{op}: every packed sequence needs at least one token; "
                             f"cu_seqlens has repeated offsets {cu_seqlens.tolist()}")
    elif L < 1:
        raise ValueError(f"{op}: the sequence length l (Q.shape[1]) must be >= 1")
    _check_states(op, Input_States, nseq, h, p, n, a, Q.device)
    check_chunk_size(op, chunk_size)
    _check_values(op, ADT, DT, Trap)


def mamba3_siso(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
                Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, D: Tensor | None = None,
                Z: Tensor | None = None, Input_States: States | None = None,
                chunk_size: int = 64, return_final_states: bool = False,
                cu_seqlens: Tensor | None = None, backend: str = "auto"):
    """Mamba-3 SISO, per head (head i reads Q/K head i // (h // h_qk)):

        φ_t = (φ_{t−1} + DT_t·π·tanh(Angles_t)) mod 2π
        q̃_t = R(φ_t)(Q_t + Q_bias),   k̃_t = R(φ_t)(K_t + K_bias)   (pairs (2j, 2j+1), j < a)
        λ_t = σ(Trap_t),  α_t = e^{ADT_t},  β_t = (1 − λ_t) DT_t α_t,  γ_t = λ_t DT_t
        S_t = α_t S_{t−1} + β_t v_{t−1} ⊗ k̃_{t−1} + γ_t v_t ⊗ k̃_t
        out_t = (S_t q̃_t + D v_t) · silu(Z_t)

    Q, K (b, l, h_qk, n); V, Z (b, l, h, p); ADT, DT, Trap (b, h, l); Q_bias, K_bias (h, n);
    Angles (b, l, h, a), a ≤ n/2; D (h,); Input_States ``(angle (s, h, a), ssm (s, h, p, n),
    k (s, h, n), v (s, h, p))`` (zeros if None), s = b, or the number of sequences packed
    along l by ``cu_seqlens`` (s+1,) (then b = 1). Returns out (b, l, h, p) in V's dtype, or
    ``(out, angle, ssm, k, v)`` final states (angle and ssm float32, float64 for float64;
    k in K's dtype, v in V's). Differentiable in every tensor argument. Computed in float32
    (float64 for float64); ``chunk_size`` changes only round-off.
    """
    validate(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, Input_States, chunk_size,
             cu_seqlens)
    kwargs = dict(Q=Q, K=K, V=V, ADT=ADT, DT=DT, Trap=Trap, Q_bias=Q_bias, K_bias=K_bias,
                  Angles=Angles, D=D, Z=Z, Input_States=Input_States, chunk_size=chunk_size,
                  return_final_states=return_final_states, cu_seqlens=cu_seqlens)
    return dispatch(OP, backend, Q.device.type, kwargs)


def mamba3_siso_step(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
                     Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, D: Tensor | None = None,
                     Z: Tensor | None = None, Input_States: States | None = None
                     ) -> tuple[Tensor, States]:
    """One token of :func:`mamba3_siso` (mamba-ssm's ``mamba3_siso_step``): Q, K (b, h_qk, n);
    V, Z (b, h, p); ADT, DT, Trap (b, h); Angles (b, h, a); Input_States as the scan's with
    s = b (zeros if None). Returns ``(out (b, h, p), (angle, ssm, k, v))``; the states have
    the scan's dtypes, so stepping token by token equals one scan over the tokens."""
    op = "mamba3_siso_step"
    check_tensor(op, "Q", Q, (None, None, None), "(b, h_qk, n)")
    batch = Q.shape[0]
    hq, n, h, p, a = _check_common(op, Q, K, V, (batch,), Q_bias, K_bias, Angles, D, Z, "(b, ")
    for name, X in (("ADT", ADT), ("DT", DT), ("Trap", Trap)):
        check_tensor(op, name, X, (batch, h), "(b, h)", device=Q.device)
    _check_states(op, Input_States, batch, h, p, n, a, Q.device)
    _check_values(op, ADT, DT, Trap)
    acc = accumulation_dtype(V.dtype)
    f = lambda X: None if X is None else X.to(acc)[None]  # noqa: E731  (l = 1, time first)
    rep = h // hq
    if Input_States is None:
        st = (V.new_zeros(batch, h, a, dtype=acc), V.new_zeros(batch, h, p, n, dtype=acc),
              V.new_zeros(batch, h, n, dtype=acc), V.new_zeros(batch, h, p, dtype=acc))
    else:
        st = tuple(X.to(acc) for X in Input_States)
    y, (phi, S, k, v) = run_sequence(
        f(Q.repeat_interleave(rep, dim=1)), f(K.repeat_interleave(rep, dim=1)), f(V), f(ADT),
        f(DT), f(Trap), Q_bias.to(acc), K_bias.to(acc), f(Angles),
        None if D is None else D.to(acc), f(Z), st)
    return y[0].to(V.dtype), (phi, S, k.to(K.dtype), v.to(V.dtype))
