"""The one recurrent engine: runs any recurrent block from its :class:`~hjseq.spec.HJSpec`.

A block (``hjseq.nn.base.RecurrentBlock``) supplies its spec and a few hooks; the engine
owns the time loop, the state handling, the noise, the step API and the kernel dispatch.
No block writes its own loop.

Block hooks (duck-typed; ``RecurrentBlock`` gives the defaults)::

    spec                          HJSpec(hamiltonian, viscosity, step, scheme)
    check_input(x) -> None        x (B, L, I): rank, size, dtype, finiteness
    zero_state(x) -> state        the default initial state for a batch
    check_state(state, x) -> state
    prepare(x, state) -> (seq, const, state)
                                  per-token drive tensors seq[name] (B, L, ·) computed for the
                                  whole sequence at once (input projections, Mamba's conv),
                                  held tensors const[name] (weights), and the state after
                                  any input-side update (Mamba's conv state)
    token_drive(drive, state) -> drive
                                  add state-dependent held quantities (LSTM gates from h_{k-1})
    flow_state(state) -> h        the part of the state the HJ flow moves (B, *F)
    replace_flow(state, h) -> state
                                  the state with its flow part replaced (tuple states)
    readout(h, drive, state) -> (y_k, state)
    finish(ys, seq) -> out        output stage over the whole sequence (B, L, ·)

Token k of the reference loop (t = k):

    d_k  = token_drive(seq[:, k] ∪ const, state_k)
    h    = flow_state(state_k)
    Δ_k  = spec.step(k, h, d_k)                 (ConstantStep/DriveStep/GateStep/SoftplusStep)
    h'   = scheme.step(H, Δ_k, k, h, d_k)             (euler, gated_euler, zoh, euler_b)
    h'  += √(2 ε dt) ξ_k      (ε = spec.viscosity > 0, training mode only; ξ_k ~ N(0, I))
    y_k, state_{k+1} = readout(h', d_k, state_k)

Unless the block's ``backend`` is ``"loop"`` (the reference loop, always available), a
fused path replaces that loop, chosen by :func:`fused_path` from what the spec declares:

1. ``closed_form``: a kernel registered with :func:`register_kernel` for exactly this
   (Hamiltonian class, scheme, block class) — torch's cells, Mamba's selective scan;
2. ``ssd``: a ``head_affine`` Hamiltonian (S ← Ā S + s x Bᵀ per head) with a
   ``linear_readout`` (y = S·C): the chunked ``ssd_scan`` op;
3. ``linear_scan``: an ``affine`` Hamiltonian (h ← Ā ⊙ h + s ⊙ b): ``linear_scan``;

where 2 and 3 need a tokenwise block (:func:`tokenwise`) and a scheme that is a linear
map on affine fields (``Scheme.discrete_affine``): every token's (Ā, s, b) is computed at
once. A path declines by raising ``BackendUnavailable``: with ``backend`` "auto" or "ref"
the engine tries the next one and then the loop; an explicitly named backend (``"cpu"``,
``"triton"``, ...) re-raises. The noise ξ is drawn once, (B, L, *F), from torch's global
generator before dispatch, so the loop and every path see the same draws.

Characteristics view (:func:`characteristics`, for the solver)
--------------------------------------------------------------
``block.characteristics(x, initial_state=None)`` returns a :class:`Characteristics` with

- ``states`` (B, L+1, S): the block's discrete flow states at token boundaries, flattened
  (``states[:, 0]`` is the initial one), computed deterministically (no noise);
- ``outputs``: the block's outputs on x (B, L, ·) from the same run;
- ``scheme``, ``order``: the scheme's name and order (``math.inf`` = exact flow);
- ``rhs(k, h) -> (B, S)``: the vector field of token k in normalised token time τ ∈ [0, 1],
  ``dh/dτ = Δ_k ⊙ F(h; d_k)`` with the input, the step Δ_k and everything computed from the
  previous state (the LSTM gates) held over the token. Δ_k is the step rule evaluated at the
  token's start state on the block's own trajectory (``states[:, k]``): for the GRU the
  update gate ``1 − s(h_k)`` is held, only the candidate ``n(h) − h`` moves with h;
- ``discrete_step(k, h)``: the block's one-token update (no noise) from flat state h with
  those held quantities — exactly the block's update when h = ``states[:, k]``;
- ``substep(k, h, m)``: the same scheme applied m times with step Δ_k/m;
  ``substep(k, h, 1) == discrete_step(k, h)``;
- ``readout(k, h)``: the block's output for token k from the flow state h after the token.

Per block (h the hidden state, c the LSTM cell state, Δ = dt):

=========  =====================  ===============================================  =========
block      flow state (S)         rhs(k, h) = dh/dτ                                 scheme
=========  =====================  ===============================================  =========
HJRNN      h (H)                  Δ(−h + tanh(W_ih x_k + b_ih + W_hh h + b_hh))     euler
HJGRU      h (H)                  Δ(1 − s_k)⊙(n(h) − h), s_k = s(h_k) held;         gated_euler
                                  s, n as torch's GRU
HJLSTM     c (H)                  Δ(−(1 − f_k)⊙c + i_k⊙g_k), gates from             euler
                                  (x_k, h_{k−1}) held; readout h_k = o_k⊙tanh(c)
HJMamba    ssm state (D·N,        Δ_k⊙(A⊙h + B_k u_k),  Δ_k = softplus(dt_k + b)   euler_b
           d-major)               readout y = out_proj((C_k·h + D u_k)⊙silu(z_k))  or zoh
=========  =====================  ===============================================  =========

At m → ∞, ``substep`` converges to the exact flow of ``rhs`` over τ ∈ [0, 1]; the
difference ``discrete_step − flow`` is O(Δ^{order+1}) per token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from .ops._registry import BACKEND_NAMES, BackendUnavailable
from .schemes import Scheme, get_scheme

Kernel = Callable[[Any, Tensor, Any, "Tensor | None", str], "tuple[Tensor, Any]"]
"""``kernel(block, x, state, noise, backend) -> (out, final_state)``; raises
``BackendUnavailable`` to decline (see the module docstring)."""

BLOCK_BACKENDS: tuple[str, ...] = ("auto", "loop", *BACKEND_NAMES)
"""What a recurrent block's ``backend`` may be: "auto", the engine's reference "loop", or
an op backend name (passed to whichever fused op the block runs on)."""


def check_backend(backend: Any, where: str = "backend") -> str:
    """Validate a block's backend name (at construction, not at the first forward)."""
    if not isinstance(backend, str) or backend not in BLOCK_BACKENDS:
        raise ValueError(f"{where} must be one of {list(BLOCK_BACKENDS)}, got {backend!r}")
    return backend


_CLOSED_FORM: dict[tuple[type, str, type], Kernel] = {}


class CarriedState(NamedTuple):
    """The state of a block whose scheme ``carries_input`` (``exp_trapezoidal``): the
    block's own state and the previous token's input term ``b_{k−1}`` (B, *F). A plain
    block state given as ``initial_state`` starts with b_{−1} = 0."""

    state: Any
    previous_input: Tensor


def carries_input(block: Any) -> bool:
    """True when the engine must carry the previous token's input term for this block: its
    scheme reads it and the block does not supply it from its own state (a block that keeps
    the previous token's factors, as Mamba-3 keeps x_{t−1} and B̃_{t−1}, defines
    ``previous_input(drive)`` instead and keeps its own state format)."""
    from .nn.base import RecurrentBlock

    return (get_scheme(block.spec.scheme).carries_input
            and not _method_overridden(block, "previous_input", RecurrentBlock))


def _time_scale(time_steps: Tensor | None, k: int | None, like: Tensor) -> Tensor | float:
    """The per-token time step (B,) of token k (or all (B, L) flattened) shaped to multiply
    a step Δ that broadcasts against ``like`` (B, *F) / (B·L, *F)."""
    if time_steps is None:
        return 1.0
    t = time_steps[:, k] if k is not None else time_steps.reshape(-1)
    return t.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def register_kernel(hamiltonian_cls: type, scheme_name: str, block_cls: type,
                    fn: Kernel) -> None:
    """A closed-form kernel: ``fn`` runs blocks of exactly class ``block_cls`` whose
    Hamiltonian is exactly a ``hamiltonian_cls`` and whose scheme is ``scheme_name`` — the
    one computation it was written for. Subclasses of either get the structural fused paths
    or the loop instead, so a changed ``velocity`` can never meet a stale kernel.
    ``fn(block, x, state, noise, backend)`` returns ``(out, final_state)`` exactly as the
    reference loop would, or raises ``BackendUnavailable``."""
    get_scheme(scheme_name)  # validates the name
    for what, cls in (("hamiltonian_cls", hamiltonian_cls), ("block_cls", block_cls)):
        if not isinstance(cls, type):
            raise TypeError(f"register_kernel: {what} must be a class, got {cls!r}")
    _CLOSED_FORM[(hamiltonian_cls, scheme_name, block_cls)] = fn


def find_kernel(block: Any) -> Kernel | None:
    """The closed-form kernel registered for exactly this (Hamiltonian, scheme, block)."""
    spec = block.spec
    return _CLOSED_FORM.get((type(spec.hamiltonian), spec.scheme, type(block)))


def _method_overridden(obj: Any, name: str, base: type) -> bool:
    return getattr(type(obj), name) is not getattr(base, name)


def tokenwise(block: Any) -> bool:
    """True when every token's drive, step and readout can be computed for the whole
    sequence at once: ``token_drive`` and ``readout`` read nothing of the state but its flow
    part, and the step rule does not read h. Blocks say so with ``state_free_tokens``
    (None: True unless they override ``token_drive`` or ``readout``)."""
    from .nn.base import RecurrentBlock

    declared = getattr(block, "state_free_tokens", None)
    if declared is None:
        declared = not (_method_overridden(block, "token_drive", RecurrentBlock)
                        or _method_overridden(block, "readout", RecurrentBlock))
    return bool(declared) and not block.spec.step.reads_state


def fused_path(block: Any, noisy: bool = False, closed_form: bool = True) -> str:
    """The path ``run`` takes for this block (unless ``backend == "loop"``):
    ``"closed_form"`` (a kernel registered for exactly this computation), ``"ssd"`` (a
    ``head_affine`` Hamiltonian with a ``linear_readout``, no noise), ``"linear_scan"`` (any
    ``affine`` Hamiltonian), or ``"loop"`` — chosen from what the spec declares."""
    if closed_form and find_kernel(block) is not None:
        return "closed_form"
    if not tokenwise(block):
        return "loop"
    have = type(block.spec.hamiltonian).structures()
    if get_scheme(block.spec.scheme).carries_input:
        return "linear_scan" if "affine" in have else "loop"
    if type(get_scheme(block.spec.scheme)).discrete_affine is Scheme.discrete_affine:
        return "loop"  # the scheme is not a linear map on affine fields
    if "head_affine" in have and not noisy and getattr(block, "linear_readout", None):
        return "ssd"
    if "affine" in have:
        return "linear_scan"
    return "loop"


# ----------------------------------------------------------------------------- fused paths

class _Sequence:
    """The whole sequence's token drives at once, flattened to (B·L, ·) (tokenwise blocks)."""

    def __init__(self, block: Any, x: Tensor, state: Any,
                 time_steps: Tensor | None = None) -> None:
        from .nn.base import RecurrentBlock

        if (len(block.state_names) > 1
                and not _method_overridden(block, "replace_flow", RecurrentBlock)):
            raise BackendUnavailable(f"{type(block).__name__} has a tuple state but no "
                                     "replace_flow(state, h); running the loop")
        self.block, self.B, self.L = block, x.shape[0], x.shape[1]
        self.seq, const, self.state = block.prepare(x, state)
        flat = {k: v.reshape(self.B * self.L, *v.shape[2:]) for k, v in self.seq.items()}
        self.drive = block.token_drive(checked_drive(block, {**flat, **const}), self.state)
        self.h0 = block.flow_state(self.state)
        self.flow_shape = tuple(self.h0.shape[1:])
        # h is never read by a tokenwise step rule or linear form: a meta tensor of the
        # right rank stands in for it, so a rule that does read it fails loudly
        self.h_like = torch.empty((self.B * self.L, *self.flow_shape), dtype=self.h0.dtype,
                                  device="meta")
        self.t = torch.arange(self.L, dtype=self.h0.dtype, device=self.h0.device).repeat(
            self.B).reshape(-1, *([1] * len(self.flow_shape)))
        self.dt = block.spec.step(self.t, self.h_like, self.drive)
        if time_steps is not None:
            self.dt = self.dt * _time_scale(time_steps, None, self.h_like)

    def unflat(self, v: Tensor) -> Tensor:
        return v.reshape(self.B, self.L, *v.shape[1:])


def _op_backend(op: str, backend: str) -> str:
    from .ops._registry import backends

    if backend != "auto" and backend not in backends(op):
        raise BackendUnavailable(f"{op} has no backend {backend!r} (it has "
                                 f"{sorted(backends(op))})")
    return backend


def linear_scan_path(block: Any, x: Tensor, state: Any, noise: Tensor | None,
                     backend: str, previous_input: Tensor | None = None,
                     time_steps: Tensor | None = None) -> tuple[Tensor, Any]:
    """Any tokenwise block with an ``affine`` Hamiltonian, under any scheme that is a linear
    map on affine fields: ``h_k = Ā_k ⊙ h_{k−1} + s_k ⊙ b_k (+ noise_k)`` for the whole
    sequence through ``hjseq.ops.linear_scan``, then the block's readout on every token.
    A scheme that carries the input (exp_trapezoidal) mixes b_{k−1} and b_k into the input
    term; the final state is then a :class:`CarriedState`."""
    from .ops.linear_scan import linear_scan

    sq = _Sequence(block, x, state, time_steps)
    spec = block.spec
    scheme = get_scheme(spec.scheme)
    a, b = spec.hamiltonian.affine(sq.t, sq.drive)
    full = (sq.B * sq.L, *sq.flow_shape)
    dtype = sq.h0.dtype
    if scheme.carries_input:
        b = torch.broadcast_to(b, full).to(dtype)
        b_seq = b.reshape(sq.B, sq.L, *sq.flow_shape)
        if carries_input(block):
            prev = torch.cat([previous_input.to(dtype).unsqueeze(1), b_seq[:, :-1]], dim=1)
        else:  # the block supplies b_{k−1} from its own state
            prev = torch.broadcast_to(block.previous_input(sq.drive), full).to(dtype)
        decay, term = scheme.combine(a, sq.dt, prev.reshape(full), b,
                                     sq.drive.get("trap", 0.5))
        scale, b = 1.0, term
    else:
        decay, scale = scheme.discrete_affine(a, sq.dt)
    decay = torch.broadcast_to(torch.as_tensor(decay), full).to(dtype).reshape(sq.B, sq.L, -1)
    inp = torch.broadcast_to(scale * b, full).to(dtype).reshape(sq.B, sq.L, -1)
    if noise is not None:
        inp = inp + noise.reshape(sq.B, sq.L, -1).to(dtype)
    hs, h_T = linear_scan(decay.transpose(1, 2).contiguous(), inp.transpose(1, 2).contiguous(),
                          initial_state=sq.h0.reshape(sq.B, -1), return_final_state=True,
                          backend=_op_backend("linear_scan", backend))
    hs = hs.transpose(1, 2)  # (B, L, S), a view
    from .nn.base import RecurrentBlock

    if type(block).readout is RecurrentBlock.readout and block.linear_readout is None:
        ys = hs.reshape(sq.B, sq.L, *sq.flow_shape)  # y = h: no flattening copy
    else:
        ys = sq.unflat(block.readout(hs.reshape(full), sq.drive, sq.state)[0])
    out = block.finish(ys, sq.seq)
    final = block.replace_flow(sq.state, h_T.to(dtype).reshape(sq.h0.shape))
    if carries_input(block):
        final = CarriedState(final, b_seq[:, -1])
    return out, final


def ssd_path(block: Any, x: Tensor, state: Any, noise: Tensor | None,
             backend: str, previous_input: Tensor | None = None,
             time_steps: Tensor | None = None) -> tuple[Tensor, Any]:
    """Any tokenwise block with a ``head_affine`` Hamiltonian (``S ← Ā S + s x Bᵀ`` per head,
    one decay per head and token) and ``linear_readout`` ``y = S C``: the whole sequence
    through the chunked ``hjseq.ops.ssd_scan`` op, never materialising S per token. Declines
    (→ ``linear_scan_path``) when Δ varies within a head or the scheme's decay is not
    positive."""
    from .ops import ssd_scan

    if carries_input(block):
        raise BackendUnavailable("the ssd path has no carried-input scheme")
    sq = _Sequence(block, x, state, time_steps)
    spec = block.spec
    a, xin, Bv = spec.hamiltonian.head_affine(sq.t, sq.drive)
    dt = sq.dt
    if isinstance(dt, Tensor):
        if dt.dim() > 2 and any(n != 1 for n in dt.shape[2:]):
            raise BackendUnavailable("the step varies within a head")
        dt = dt.reshape(*dt.shape[:2]) if dt.dim() > 2 else dt
    scheme = get_scheme(spec.scheme)
    a = a.to(sq.h0.dtype)
    decay, scale = scheme.discrete_affine(a, dt)
    if not bool((decay > 0).all()):
        raise BackendUnavailable(f"scheme {spec.scheme!r} gives a non-positive decay")
    log_decay = torch.broadcast_to(scheme.log_decay(a, dt), a.shape)
    scale = torch.broadcast_to(torch.as_tensor(scale, dtype=a.dtype, device=a.device), a.shape)
    C = sq.drive[block.linear_readout]
    y, S_T = ssd_scan(sq.unflat((scale.unsqueeze(-1) * xin).to(xin.dtype)),
                      sq.unflat(log_decay), sq.unflat(Bv), sq.unflat(C),
                      initial_states=sq.h0, return_final_states=True,
                      backend=_op_backend("ssd_scan", backend))
    out = block.finish(y, sq.seq)
    return out, block.replace_flow(sq.state, S_T.to(sq.h0.dtype))


def _run_fused(block: Any, x: Tensor, state: Any, noise: Tensor | None, backend: str,
               previous_input: Tensor | None = None,
               time_steps: Tensor | None = None) -> tuple[Tensor, Any] | None:
    """The fused path for this block (closed form, ssd, linear_scan), or None for the loop.
    A declining path falls to the next one under "auto"/"ref"; a named backend re-raises.
    A closed-form kernel takes irregular ``time_steps`` only if it says so
    (``supports_time_steps``); the structural paths always do."""
    structural = {"ssd": [ssd_path, linear_scan_path], "linear_scan": [linear_scan_path],
                  "loop": []}[fused_path(block, noise is not None, closed_form=False)]
    closed = find_kernel(block)
    usable = closed is not None and (time_steps is None
                                     or getattr(closed, "supports_time_steps", False))
    for kernel in ([closed] if usable else []) + structural:
        try:
            if kernel is closed:
                if time_steps is not None:
                    return kernel(block, x, state, noise, backend, time_steps=time_steps)
                return kernel(block, x, state, noise, backend)
            return kernel(block, x, state, noise, backend, previous_input, time_steps)
        except BackendUnavailable:
            if backend not in ("auto", "ref"):
                raise
    if backend not in ("auto", "ref"):
        raise BackendUnavailable(
            f"{type(block).__name__}: backend={backend!r} names a fused kernel, but no fused "
            f"path fits ({type(block.spec.hamiltonian).__name__}, {block.spec.scheme!r}): "
            "the Hamiltonian declares no affine()/head_affine(), or the block's drive, step "
            "or readout reads the state; use backend='auto', 'ref' or 'loop'")
    return None


class DriveKeyError(KeyError):
    """A Hamiltonian or step rule read a drive entry that the block did not provide."""

    def __str__(self) -> str:
        return str(self.args[0])


class _CheckedDrive(dict):
    """A drive dict whose missing keys raise an error naming the hooks that fill it."""

    owner: str = ""

    def __missing__(self, key: str) -> Tensor:
        raise DriveKeyError(
            f"the drive has no entry {key!r} (it has {sorted(self)}): {self.owner}.prepare() "
            "(per-token tensors and held weights) or token_drive() must provide every key "
            "the Hamiltonian and the step rule read")


def checked_drive(block: Any, drive: dict[str, Tensor]) -> dict[str, Tensor]:
    d = _CheckedDrive(drive)
    d.owner = type(block).__name__
    return d


# ----------------------------------------------------------------------------- noise

def draw_noise(block: Any, x: Tensor, state: Any) -> Tensor | None:
    """``√(2 ε dt) ξ`` of shape (B, L, *F) when the block is training with ε > 0, else None."""
    spec = block.spec
    if not (block.training and spec.stochastic):
        return None
    spec.validate()
    flow = block.flow_state(state)
    xi = torch.randn((x.shape[0], x.shape[1], *flow.shape[1:]), dtype=flow.dtype,
                     device=flow.device)
    return torch.sqrt(2 * torch.as_tensor(spec.viscosity, dtype=flow.dtype,
                                          device=flow.device) * spec.step.dt) * xi


# ----------------------------------------------------------------------------- the loop

def _token(block: Any, seq: dict[str, Tensor], const: dict[str, Tensor],
           k: int) -> dict[str, Tensor]:
    d = {name: v[:, k] for name, v in seq.items()}
    d.update(const)
    return checked_drive(block, d)


def _one_step(block: Any, h: Tensor, d: dict[str, Tensor], t: float, dt: Any = None,
              scale: float = 1.0) -> Tensor:
    """One scheme step of the block's flow from h with step ``scale·Δ`` (Δ = the step rule
    at h unless a held ``dt`` is given)."""
    spec = block.spec
    if dt is None:
        dt = spec.step(t, h, d)
    return get_scheme(spec.scheme).step(spec.hamiltonian, dt * scale, t, h, d)


@dataclass
class LoopResult:
    """What :func:`loop` returns: out (B, L, ·); the final state; the flow-state trajectory
    (B, L+1, *F) if asked; and, if ``record``, the per-token drives, the states before each
    token and the sequence drive ``seq`` (for the characteristics view)."""

    out: Tensor
    final_state: Any
    states: Tensor | None = None
    drives: list[dict[str, Tensor]] | None = None
    pre_states: list[Any] | None = None
    seq: dict[str, Tensor] | None = None


def loop(block: Any, x: Tensor, state: Any, noise: Tensor | None = None,
         return_states: bool = False, record: bool = False,
         previous_input: Tensor | None = None,
         time_steps: Tensor | None = None) -> LoopResult:
    """The reference loop (module docstring): Hamiltonian velocity + scheme step per token.
    A scheme that carries the input reads ``drive["previous_input"]`` (b_{k−1}) and the
    final state is a :class:`CarriedState`; ``time_steps`` (B, L) multiplies each Δ_k."""
    seq, const, state = block.prepare(x, state)
    scheme = get_scheme(block.spec.scheme)
    engine_carries = carries_input(block)
    ys, traj, drives, pre = [], [block.flow_state(state)], [], []
    for k in range(x.shape[1]):
        d = block.token_drive(_token(block, seq, const, k), state)
        h0 = block.flow_state(state)
        if scheme.carries_input:
            d["previous_input"] = previous_input if engine_carries else block.previous_input(d)
        if record:
            drives.append(d)
            pre.append(state)
        dt = None
        if time_steps is not None:
            dt = block.spec.step(float(k), h0, d) * _time_scale(time_steps, k, h0)
        h = _one_step(block, h0, d, float(k), dt=dt)
        if engine_carries:
            previous_input = torch.broadcast_to(
                block.spec.hamiltonian.affine(float(k), d)[1], h.shape).to(h.dtype)
        if noise is not None:
            h = h + noise[:, k]
        y, state = block.readout(h, d, state)
        ys.append(y)
        if return_states:
            traj.append(h)
    out = block.finish(torch.stack(ys, dim=1), seq)
    if engine_carries:
        state = CarriedState(state, previous_input)
    return LoopResult(out, state, torch.stack(traj, dim=1) if return_states else None,
                      *((drives, pre, seq) if record else (None, None, None)))


def _start(block: Any, x: Tensor, initial_state: Any,
           time_steps: Tensor | None = None) -> tuple[Any, Tensor | None]:
    """Validate x, the initial state and the time steps; return ``(state, previous_input)``
    to start from (zeros if None; previous_input only for a carried-input scheme)."""
    block.check_input(x)
    if time_steps is not None:
        _check_time_steps(block, x, time_steps)
    carried = initial_state if isinstance(initial_state, CarriedState) else None
    if carried is not None:
        if not carries_input(block):
            raise ValueError(f"{type(block).__name__}: initial_state is a CarriedState, but "
                             f"scheme {block.spec.scheme!r} carries no input; pass the block's "
                             "own state (CarriedState.state)")
        initial_state = carried.state
    state = block.zero_state(x) if initial_state is None else block.check_state(initial_state, x)
    if not carries_input(block):
        return state, None
    h0 = block.flow_state(state)
    if carried is None:
        return state, torch.zeros_like(h0)
    prev = carried.previous_input
    if not isinstance(prev, Tensor) or prev.shape != h0.shape:
        raise ValueError(f"{type(block).__name__}: CarriedState.previous_input must have the "
                         f"flow state's shape {tuple(h0.shape)}, got {_shape(prev)}")
    return state, prev.to(h0.dtype)


def _check_time_steps(block: Any, x: Tensor, dt: Any) -> None:
    want = tuple(x.shape[:2])
    if not isinstance(dt, Tensor) or tuple(dt.shape) != want or not dt.is_floating_point():
        raise ValueError(f"{type(block).__name__}: dt (per-token time steps) must be a floating "
                         f"tensor of shape (B, L) = {want}, got {_shape(dt)}")
    if dt.device != x.device:
        raise ValueError(f"{type(block).__name__}: dt is on {dt.device}, x on {x.device}")
    if not bool(torch.isfinite(dt).all()) or bool((dt < 0).any()):
        raise ValueError(f"{type(block).__name__}: dt (per-token time steps) must be finite "
                         "and >= 0 (the sampling intervals of the data)")


def run(block: Any, x: Tensor, initial_state: Any = None, return_states: bool = False,
        time_steps: Tensor | None = None) -> tuple[Tensor, Any, Tensor | None]:
    """Run ``block`` over x (B, L, I) from ``initial_state`` (zeros if None).

    Returns ``(out, final_state, states)``: out (B, L, ·), the final state in the block's
    state format (a :class:`CarriedState` under a carried-input scheme), and
    (``return_states``) the flow-state trajectory (B, L+1, *F), else None. ``time_steps``
    (B, L) ≥ 0: irregular sampling intervals, multiplying each token's Δ (the noise scales
    with them). Dispatch (:func:`fused_path`): a fused path unless ``block.backend ==
    "loop"`` or the trajectory is requested (fused paths return only the final state)."""
    state, prev = _start(block, x, initial_state, time_steps)
    noise = draw_noise(block, x, state)
    if noise is not None and time_steps is not None:
        flow_dims = noise.dim() - 2
        noise = noise * time_steps.to(noise.dtype).sqrt().reshape(
            *time_steps.shape, *([1] * flow_dims))
    if block.backend != "loop" and not return_states:
        fused = _run_fused(block, x, state, noise, block.backend, prev, time_steps)
        if fused is not None:
            return fused[0], fused[1], None
    res = loop(block, x, state, noise, return_states, previous_input=prev,
               time_steps=time_steps)
    return res.out, res.final_state, res.states


def step(block: Any, x_t: Tensor, state: Any = None,
         time_step: Tensor | None = None) -> tuple[Tensor, Any]:
    """One token: x_t (B, I) -> ``(y_t, state)``; O(1) in the sequence length.
    ``time_step`` (B,): the token's sampling interval (irregular time), default 1."""
    if not isinstance(x_t, Tensor) or x_t.dim() != 2:
        raise ValueError(f"{type(block).__name__}.step: x_t must be a (B, I) tensor (one token), "
                         f"got {_shape(x_t)}; use forward() for (B, L, I) sequences")
    ts = None if time_step is None else time_step.reshape(-1, 1)
    out, final, _ = run(block, x_t.unsqueeze(1), state, time_steps=ts)
    return out[:, 0], final


def _shape(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


# ----------------------------------------------------------------------------- characteristics

class Characteristics:
    """The block as a sequence of per-token ODEs; see the module docstring for the maths.

    Attributes: ``states`` (B, L+1, S), ``outputs`` (B, L, ·), ``scheme`` (str), ``order``
    (float), ``flow_shape`` (the unflattened per-sample flow state shape), ``block``."""

    def __init__(self, block: Any, states: Tensor, outputs: Tensor,
                 drives: list[dict[str, Tensor]], seq: dict[str, Tensor],
                 pre_states: list[Any], time_steps: Tensor | None = None):
        self.block = block
        self.flow_shape = tuple(states.shape[2:])
        self.states = states.flatten(2)
        self.outputs = outputs
        self.scheme = block.spec.scheme
        self.order = get_scheme(self.scheme).order
        self._drives, self._seq, self._pre = drives, seq, pre_states
        # Δ_k from the token's start state on the block's own trajectory, held over the token
        self._steps = [block.spec.step(float(k), states[:, k], d)
                       * _time_scale(time_steps, k, states[:, k]) for k, d in enumerate(drives)]
        self._carried = get_scheme(self.scheme).carries_input

    @property
    def length(self) -> int:
        return len(self._drives)

    def _unflat(self, k: int, h: Tensor) -> Tensor:
        if not 0 <= k < self.length:
            raise IndexError(f"k must be a token index in [0, {self.length}), got {k}")
        if h.dim() != 2 or h.shape != self.states.shape[::2]:
            raise ValueError(f"h must be (B, S) = {tuple(self.states.shape[::2])}, "
                             f"got {tuple(h.shape)}")
        return h.reshape(h.shape[0], *self.flow_shape)

    def _input_at(self, k: int, tau: float) -> tuple[Tensor, Tensor]:
        """``(a, b(τ))``: the affine field of token k with its input interpolated linearly
        from the previous token's (τ = 0) to this token's (τ = 1) — the flow a carried-input
        scheme discretizes."""
        d = self._drives[k]
        a, b = self.block.spec.hamiltonian.affine(float(k), d)
        prev = d["previous_input"]
        return a, prev + tau * (b - prev)

    def rhs(self, k: int, h: Tensor, tau: float = 0.0) -> Tensor:
        """``dh/dτ = Δ_k ⊙ F(h; d_k)`` (B, S) for token k, τ ∈ [0, 1]. Under a scheme that
        carries the input, ``F = a ⊙ h + b(τ)`` with b interpolated across the token."""
        hh, d = self._unflat(k, h), self._drives[k]
        if self._carried:
            a, b = self._input_at(k, tau)
            return (self._steps[k] * (a * hh + b)).flatten(1)
        return (self._steps[k] * self.block.spec.hamiltonian.velocity(float(k), hh, d)
                ).flatten(1)

    def discrete_step(self, k: int, h: Tensor) -> Tensor:
        """The block's own update of token k from flat state h (B, S), without noise."""
        return self.substep(k, h, 1)

    def substep(self, k: int, h: Tensor, m: int) -> Tensor:
        """The block's scheme applied m times with step Δ_k/m (B, S)."""
        if not (isinstance(m, int) and m >= 1):
            raise ValueError(f"m (number of substeps) must be an int >= 1, got {m!r}")
        hh, d = self._unflat(k, h), self._drives[k]
        if self._carried:  # each substep mixes the interpolated input at its two ends
            scheme = get_scheme(self.scheme)
            for j in range(m):
                a, b0 = self._input_at(k, j / m)
                _, b1 = self._input_at(k, (j + 1) / m)
                decay, inp = scheme.combine(a, self._steps[k] / m, b0, b1,
                                            d.get("trap", 0.5))
                hh = decay * hh + inp
            return hh.flatten(1)
        for j in range(m):
            hh = _one_step(self.block, hh, d, k + j / m, dt=self._steps[k], scale=1.0 / m)
        return hh.flatten(1)

    def readout(self, k: int, h: Tensor) -> Tensor:
        """The block's output of token k (B, ·) from the flow state h (B, S) after it."""
        hh, d = self._unflat(k, h), self._drives[k]
        y, _ = self.block.readout(hh, d, self._pre[k])
        seq_k = {name: v[:, k:k + 1] for name, v in self._seq.items()}
        return self.block.finish(y.unsqueeze(1), seq_k)[:, 0]


def characteristics(block: Any, x: Tensor, initial_state: Any = None,
                    time_steps: Tensor | None = None) -> Characteristics:
    """Run ``block`` deterministically over x (B, L, I) (with irregular ``time_steps``
    (B, L) if given) and return its :class:`Characteristics` (module docstring)."""
    state, prev = _start(block, x, initial_state, time_steps)
    res = loop(block, x, state, None, return_states=True, record=True, previous_input=prev,
               time_steps=time_steps)
    return Characteristics(block, res.states, res.out, res.drives, res.seq, res.pre_states,
                           time_steps)


__all__ = ["register_kernel", "find_kernel", "fused_path", "tokenwise", "linear_scan_path",
           "ssd_path", "run", "step", "loop", "draw_noise", "characteristics",
           "Characteristics", "LoopResult", "BLOCK_BACKENDS", "check_backend", "DriveKeyError",
           "CarriedState", "carries_input"]
