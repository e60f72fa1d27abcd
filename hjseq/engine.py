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
    readout(h, drive, state) -> (y_k, state)
    finish(ys, seq) -> out        output stage over the whole sequence (B, L, ·)

Token k of the reference loop (t = k):

    d_k  = token_drive(seq[:, k] ∪ const, state_k)
    h    = flow_state(state_k)
    Δ_k  = spec.step(k, h, d_k)                        (ConstantStep/GateStep/SoftplusStep)
    h'   = scheme.step(H, Δ_k, k, h, d_k)             (euler, gated_euler, zoh, euler_b)
    h'  += √(2 ε dt) ξ_k      (ε = spec.viscosity > 0, training mode only; ξ_k ~ N(0, I))
    y_k, state_{k+1} = readout(h', d_k, state_k)

A fused kernel registered with :func:`register_kernel` for the (Hamiltonian class, scheme)
pair replaces that loop when the block's ``backend`` is not ``"loop"`` (the reference
loop, always available). A kernel declines by raising ``BackendUnavailable``: with
``backend`` "auto" or "ref" the engine then runs the loop; an explicitly named backend
(``"cpu"``, ``"triton"``, ...) re-raises. The noise ξ is drawn once, (B, L, *F), from torch's
global generator before dispatch, so the loop and a kernel see the same draws.

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
from typing import Any, Callable

import torch
from torch import Tensor

from .ops._registry import BackendUnavailable
from .schemes import get_scheme

Kernel = Callable[[Any, Tensor, Any, "Tensor | None", str], "tuple[Tensor, Any]"]
"""``kernel(block, x, state, noise, backend) -> (out, final_state)``; raises
``BackendUnavailable`` to decline (see the module docstring)."""

_KERNELS: dict[tuple[type, str], Kernel] = {}


def register_kernel(hamiltonian_cls: type, scheme_name: str, fn: Kernel) -> None:
    """Use ``fn`` for blocks whose Hamiltonian is a ``hamiltonian_cls`` (or subclass) and
    whose scheme is ``scheme_name``. ``fn(block, x, state, noise, backend)`` returns
    ``(out, final_state)`` exactly as the reference loop would, or raises
    ``BackendUnavailable``."""
    get_scheme(scheme_name)  # validates the name
    _KERNELS[(hamiltonian_cls, scheme_name)] = fn


def find_kernel(hamiltonian: Any, scheme_name: str) -> Kernel | None:
    """The registered kernel for this Hamiltonian (nearest class in its MRO) and scheme."""
    for cls in type(hamiltonian).__mro__:
        fn = _KERNELS.get((cls, scheme_name))
        if fn is not None:
            return fn
    return None


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

def _token(seq: dict[str, Tensor], const: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    d = {name: v[:, k] for name, v in seq.items()}
    d.update(const)
    return d


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
         return_states: bool = False, record: bool = False) -> LoopResult:
    """The reference loop (module docstring): Hamiltonian velocity + scheme step per token."""
    seq, const, state = block.prepare(x, state)
    ys, traj, drives, pre = [], [block.flow_state(state)], [], []
    for k in range(x.shape[1]):
        d = block.token_drive(_token(seq, const, k), state)
        if record:
            drives.append(d)
            pre.append(state)
        h = _one_step(block, block.flow_state(state), d, float(k))
        if noise is not None:
            h = h + noise[:, k]
        y, state = block.readout(h, d, state)
        ys.append(y)
        if return_states:
            traj.append(h)
    out = block.finish(torch.stack(ys, dim=1), seq)
    return LoopResult(out, state, torch.stack(traj, dim=1) if return_states else None,
                      *((drives, pre, seq) if record else (None, None, None)))


def _start(block: Any, x: Tensor, initial_state: Any) -> Any:
    """Validate x and the initial state; return the state to start from (zeros if None)."""
    block.check_input(x)
    return block.zero_state(x) if initial_state is None else block.check_state(initial_state, x)


def run(block: Any, x: Tensor, initial_state: Any = None, return_states: bool = False
        ) -> tuple[Tensor, Any, Tensor | None]:
    """Run ``block`` over x (B, L, I) from ``initial_state`` (zeros if None).

    Returns ``(out, final_state, states)``: out (B, L, ·), the final state in the block's
    state format, and (``return_states``) the flow-state trajectory (B, L+1, *F), else None.
    Dispatch: a registered kernel unless ``block.backend == "loop"`` or the trajectory is
    requested (kernels return only the final state)."""
    state = _start(block, x, initial_state)
    noise = draw_noise(block, x, state)
    backend = block.backend
    if backend != "loop" and not return_states:
        kernel = find_kernel(block.spec.hamiltonian, block.spec.scheme)
        if kernel is not None:
            try:
                out, final = kernel(block, x, state, noise, backend)
                return out, final, None
            except BackendUnavailable:
                if backend not in ("auto", "ref"):
                    raise
        elif backend not in ("auto", "ref"):
            raise BackendUnavailable(
                f"{type(block).__name__}: backend={backend!r} names a fused kernel, but none is "
                f"registered for ({type(block.spec.hamiltonian).__name__}, "
                f"{block.spec.scheme!r}); use backend='auto', 'ref' or 'loop'")
    res = loop(block, x, state, noise, return_states)
    return res.out, res.final_state, res.states


def step(block: Any, x_t: Tensor, state: Any = None) -> tuple[Tensor, Any]:
    """One token: x_t (B, I) -> ``(y_t, state)``; O(1) in the sequence length."""
    if not isinstance(x_t, Tensor) or x_t.dim() != 2:
        raise ValueError(f"{type(block).__name__}.step: x_t must be a (B, I) tensor (one token), "
                         f"got {_shape(x_t)}; use forward() for (B, L, I) sequences")
    out, final, _ = run(block, x_t.unsqueeze(1), state)
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
                 pre_states: list[Any]):
        self.block = block
        self.flow_shape = tuple(states.shape[2:])
        self.states = states.flatten(2)
        self.outputs = outputs
        self.scheme = block.spec.scheme
        self.order = get_scheme(self.scheme).order
        self._drives, self._seq, self._pre = drives, seq, pre_states
        # Δ_k from the token's start state on the block's own trajectory, held over the token
        self._steps = [block.spec.step(float(k), states[:, k], d) for k, d in enumerate(drives)]

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

    def rhs(self, k: int, h: Tensor) -> Tensor:
        """``dh/dτ = Δ_k ⊙ F(h; d_k)`` (B, S) for token k, τ ∈ [0, 1]."""
        hh, d = self._unflat(k, h), self._drives[k]
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
        for j in range(m):
            hh = _one_step(self.block, hh, d, k + j / m, dt=self._steps[k], scale=1.0 / m)
        return hh.flatten(1)

    def readout(self, k: int, h: Tensor) -> Tensor:
        """The block's output of token k (B, ·) from the flow state h (B, S) after it."""
        hh, d = self._unflat(k, h), self._drives[k]
        y, _ = self.block.readout(hh, d, self._pre[k])
        seq_k = {name: v[:, k:k + 1] for name, v in self._seq.items()}
        return self.block.finish(y.unsqueeze(1), seq_k)[:, 0]


def characteristics(block: Any, x: Tensor, initial_state: Any = None) -> Characteristics:
    """Run ``block`` deterministically over x (B, L, I) and return its
    :class:`Characteristics` (module docstring)."""
    state = _start(block, x, initial_state)
    res = loop(block, x, state, None, return_states=True, record=True)
    return Characteristics(block, res.states, res.out, res.drives, res.seq, res.pre_states)


__all__ = ["register_kernel", "find_kernel", "run", "step", "loop", "draw_noise",
           "characteristics", "Characteristics", "LoopResult"]
