"""``RecurrentBlock``: the public API every recurrent block gets from the engine, the
input/state validation, and the shared pieces of the torch-compatible cells (init,
``from_torch``, the ``recurrent_scan`` kernel).

A block subclass sets ``self.spec`` (an :class:`~hjseq.spec.HJSpec`, registered as a
submodule), ``input_size``, ``state_names`` and :meth:`state_shapes`, defines
:meth:`prepare`, and overrides the other engine hooks it needs (``token_drive``,
``flow_state``, ``replace_flow``, ``readout``, ``finish``; see :mod:`hjseq.engine`).

Which kernel runs follows from what the spec declares (:func:`hjseq.engine.fused_path`):
a closed-form kernel only for the exact (Hamiltonian, scheme, block) it was written for;
the fused ``linear_scan`` path for an ``affine`` Hamiltonian, the chunked ``ssd`` path for
a ``head_affine`` one with ``linear_readout``; the reference loop otherwise. The fused
paths need a tokenwise block (``state_free_tokens``): its drive and readout read nothing
of the state but the flow part, and its step rule does not read h.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import engine
from ..ops._registry import BackendUnavailable
from ..spec import HJSpec, check_viscosity, expand_groups

State = Union[Tensor, tuple[Tensor, ...]]


class RecurrentBlock(nn.Module):
    """Base class: ``forward``, ``step``, ``characteristics``, ``zero_state`` and validation.

    Subclass contract: ``spec`` (HJSpec), ``input_size`` (int), ``state_names`` (tuple of
    names; a single name means the state is one tensor, otherwise a tuple), ``state_shapes()``
    (per-sample shapes), ``prepare()``, ``backend`` (one of
    :data:`hjseq.engine.BLOCK_BACKENDS`, checked when set), ``check_finite`` (bool: check
    parameters and inputs for NaN/inf on every call), ``batch_first`` (x is (B, L, I) when
    True, (L, B, I) otherwise), ``linear_readout`` (the drive key C of a readout that is
    exactly ``y = S·C``; enables the ``ssd`` path), ``state_free_tokens`` (see the module
    docstring; None derives it from which hooks the class overrides).
    """

    spec: HJSpec
    input_size: int
    state_names: tuple[str, ...] = ("h",)
    backend: str = "auto"
    check_finite: bool = False
    batch_first: bool = True
    linear_readout: str | None = None
    state_free_tokens: bool | None = None

    # ------------------------------------------------------------------ public API
    def forward(self, x: Tensor, initial_state: State | None = None,
                return_final_state: bool = False, dt: Tensor | None = None
                ) -> Union[Tensor, tuple[Tensor, State]]:
        """x (B, L, I) -> out (B, L, ·) ((L, B, ·) when ``batch_first`` is False), and the
        final state if ``return_final_state``. ``initial_state``: same format as the final
        state (zeros if None). ``dt`` (B, L) (same layout as x's first two axes): irregular
        time — each token's sampling interval, multiplying the block's step Δ (the HJ time
        warp); every scheme keeps its order in the real time."""
        if not self.batch_first:
            x = _seq_first(self, x)
            dt = None if dt is None else dt.transpose(0, 1)
        out, final, _ = engine.run(self, x, initial_state, time_steps=dt)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out, final) if return_final_state else out

    def step(self, x_t: Tensor, state: State | None = None,
             dt: Tensor | None = None) -> tuple[Tensor, State]:
        """One token x_t (B, I) -> ``(y_t, state)`` (O(1) decoding; ``state=None`` is zeros;
        ``dt`` (B,): the token's sampling interval)."""
        return engine.step(self, x_t, state, dt)

    def trajectory(self, x: Tensor, initial_state: State | None = None) -> tuple[Tensor, Tensor]:
        """``(out, states)``: outputs and the flow-state trajectory (B, L+1, *F) (reference
        loop; with noise in training mode when ε > 0). x is always (B, L, I)."""
        out, _, states = engine.run(self, x, initial_state, return_states=True)
        return out, states

    def characteristics(self, x: Tensor, initial_state: State | None = None,
                        dt: Tensor | None = None) -> engine.Characteristics:
        """The characteristics view for the solver (x (B, L, I), irregular time steps dt
        (B, L) if given); see :mod:`hjseq.engine`."""
        return engine.characteristics(self, x, initial_state, dt)

    def fused_path(self) -> str:
        """Which path ``forward`` takes under this block's spec: "closed_form", "ssd",
        "linear_scan" or "loop" (see :func:`hjseq.engine.fused_path`)."""
        if self.backend == "loop":
            return "loop"
        return engine.fused_path(self, noisy=self.training and self.spec.stochastic)

    def zero_state(self, x: Tensor) -> State:
        """The zero state for the batch of x (B, L, I) (dtype/device of x)."""
        return self.allocate_state(x.shape[0], dtype=x.dtype, device=x.device)

    def allocate_state(self, batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> State:
        """A zero state for ``batch`` samples (defaults: the parameters' dtype and device)."""
        p = self.reference_parameter()
        dtypes = self.state_dtypes(dtype or (p.dtype if p is not None
                                             else torch.get_default_dtype()))
        device = device or (p.device if p is not None else None)
        parts = tuple(torch.zeros(batch, *shape, dtype=dt, device=device)
                      for shape, dt in zip(self.state_shapes(), dtypes))
        return parts[0] if len(parts) == 1 else parts

    def reference_parameter(self) -> Tensor | None:
        """The tensor whose dtype/device inputs must match (default: the first parameter, else
        the first buffer; None for a block that holds neither: no check)."""
        return next(self.parameters(), None) if next(self.parameters(), None) is not None \
            else next(self.buffers(), None)

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample shape of each state part (in ``state_names`` order)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define state_shapes() -> a tuple with one per-sample "
            f"shape per name in state_names {self.state_names}, e.g. ((hidden_size,),)")

    def state_dtypes(self, dtype: torch.dtype) -> tuple[torch.dtype, ...]:
        """dtype of each state part for inputs of ``dtype`` (default: all the input's)."""
        return (dtype,) * len(self.state_names)

    # ------------------------------------------------------------------ config
    @property
    def dt(self) -> float:
        """The time step Δ (nominal for data-dependent steps)."""
        return self.spec.step.dt

    @property
    def eps(self) -> Any:
        """The viscosity ε ≥ 0: noise √(2εΔ)ξ per step in training mode (0: deterministic)."""
        return self.spec.viscosity

    @eps.setter
    def eps(self, value: Any) -> None:
        self.spec.viscosity = value  # a Parameter/tensor is registered in the spec (trains)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "backend":
            value = engine.check_backend(value, f"{type(self).__name__}: backend")
        elif name == "eps":  # the spec owns ε (a Parameter would otherwise land on the block)
            self.spec.viscosity = value
            return
        super().__setattr__(name, value)

    def _set_backend(self, backend: str) -> None:
        self.backend = backend

    # ------------------------------------------------------------------ validation
    def _where(self) -> str:
        return type(self).__name__

    def check_input(self, x: Tensor) -> None:
        """Check x is (B, L, input_size), L ≥ 1, floating, with the parameters' dtype/device."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._where()}: x must be a Tensor (B, L, {self.input_size}), "
                            f"got {type(x).__name__}")
        if x.dim() != 3:
            layout = "(B, L, I)" if self.batch_first else "(L, B, I) (batch_first=False)"
            raise ValueError(f"{self._where()}: x must have rank 3 {layout} with "
                             f"I = {self.input_size}, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{self._where()}: x must be (B, L, {self.input_size}) — last axis "
                             f"is the input size — got shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"{self._where()}: x has length L = 0; pass at least one token")
        p = self.reference_parameter()
        if p is not None and x.dtype != p.dtype:
            raise TypeError(f"{self._where()}: x has dtype {x.dtype} but the parameters are "
                            f"{p.dtype}; cast x or the module (e.g. .to({x.dtype}))")
        if p is not None and x.device != p.device:
            raise ValueError(f"{self._where()}: x is on {x.device} but the parameters are on "
                             f"{p.device}; move one of them")
        if self.check_finite:
            self.check_parameters()
            if not torch.isfinite(x).all():
                raise ValueError(f"{self._where()}: x contains NaN or inf")

    def check_parameters(self) -> None:
        """Raise naming the first parameter that holds NaN/inf (and re-check ε ≥ 0)."""
        for name, p in self.named_parameters():
            if not torch.isfinite(p).all():
                raise ValueError(f"{self._where()}: parameter {name!r} contains NaN or inf")
        self.spec.validate()

    def check_state(self, state: State, x: Tensor) -> State:
        """Check a state against the batch of x: names, shapes (B, *shape), dtype, device."""
        shapes = self.state_shapes()
        names = self.state_names
        single = len(names) == 1
        parts = (state,) if single and isinstance(state, Tensor) else state
        fmt = ", ".join(f"{n} (B, {', '.join(map(str, s))})" for n, s in zip(names, shapes))
        if (single and not isinstance(state, Tensor)) or not isinstance(parts, (tuple, list)) \
                or len(parts) != len(names):
            raise ValueError(f"{self._where()}: initial_state/state must be "
                             f"{'a tensor' if single else 'a tuple'} {fmt}, got "
                             f"{type(state).__name__}")
        for n, s, dt, t in zip(names, shapes, self.state_dtypes(x.dtype), parts):
            want = (x.shape[0], *s)
            if not isinstance(t, Tensor) or tuple(t.shape) != want:
                raise ValueError(f"{self._where()}: state {n!r} must have shape {want} (batch "
                                 f"{x.shape[0]} of x), got {engine._shape(t)}")
            if t.dtype != dt or t.device != x.device:
                raise TypeError(f"{self._where()}: state {n!r} must have dtype {dt} on "
                                f"{x.device} (for x of dtype {x.dtype}), got ({t.dtype}, "
                                f"{t.device})")
            if self.check_finite and not torch.isfinite(t).all():
                raise ValueError(f"{self._where()}: state {n!r} contains NaN or inf")
        return parts[0] if single else tuple(parts)

    # ------------------------------------------------------------------ engine hooks
    def prepare(self, x: Tensor, state: State) -> tuple[dict[str, Tensor], dict[str, Tensor],
                                                         State]:
        """x (B, L, I) -> ``(seq, const, state)``: per-token drive tensors seq[name]
        (B, L, ·) for the whole sequence, held tensors const[name] (weights), and the state
        after any input-side update. Every key the Hamiltonian reads must be in one of them."""
        raise NotImplementedError(
            f"{type(self).__name__} must define prepare(x, state) -> (seq, const, state): "
            "seq = per-token drive tensors {name: (B, L, ·)}, const = held tensors {name: "
            "tensor}, and the state after any input-side update (usually unchanged)")

    def token_drive(self, drive: dict[str, Tensor], state: State) -> dict[str, Tensor]:
        return drive

    def flow_state(self, state: State) -> Tensor:
        return state

    def previous_input(self, drive: dict[str, Tensor]) -> Tensor | None:
        """For a scheme that carries the input (``exp_trapezoidal``): the previous token's
        input term b_{k−1}, broadcastable to the flow state, read from this token's drive.
        Not defined here: the engine then carries b_{k−1} itself in a ``CarriedState``. A
        block whose state already keeps the previous token's factors overrides it."""
        raise NotImplementedError

    def replace_flow(self, state: State, h: Tensor) -> State:
        """The state with its flow part replaced by h (a single-tensor state is h)."""
        if isinstance(state, Tensor) or state is None:
            return h
        raise NotImplementedError(
            f"{type(self).__name__} has a tuple state {self.state_names}: define "
            "replace_flow(state, h) -> the state with its flow part replaced by h")

    def readout(self, h: Tensor, drive: dict[str, Tensor], state: State) -> tuple[Tensor, State]:
        """``(y_k, state_{k+1})`` from the flow state h after token k. Default: y = h, or,
        with ``linear_readout = key``, ``y = S·C`` (S (B, H, P, N), C = drive[key] (B, G, N))."""
        if self.linear_readout is not None:
            C = expand_groups(drive[self.linear_readout], h.shape[-3])
            return torch.einsum("...hpn,...hn->...hp", h, C.to(h.dtype)), \
                self.replace_flow(state, h)
        return h, self.replace_flow(state, h)

    def finish(self, ys: Tensor, seq: dict[str, Tensor]) -> Tensor:
        return ys


def _seq_first(block: RecurrentBlock, x: Tensor) -> Tensor:
    """(L, B, I) -> (B, L, I) for a ``batch_first=False`` block (rank checked first)."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        block.check_input(x)  # raises, naming the layout
    return x.transpose(0, 1)


class TorchCell(RecurrentBlock):
    """Shared body of HJRNN/HJGRU/HJLSTM: torch's parameters (names, gate order, init) and
    ``from_torch``. Subclasses set ``GATES`` (G), ``CELL`` (recurrent_scan cell name) and
    ``TORCH`` (the torch module class), and build ``self.spec`` in ``_make_spec``.

    ``torch_api=True`` (what ``from_torch`` gives) makes ``forward`` take and return exactly
    what the torch module does: ``forward(input, hx=None) -> (output, h_n)`` (LSTM:
    ``(output, (h_n, c_n))``), states (1, B, H), unbatched (L, I) input accepted, in the
    module's ``batch_first`` layout — a drop-in replacement. ``step`` keeps hjseq's
    (B, I) / (B, H) convention either way."""

    GATES: int = 1
    CELL: str = ""
    TORCH: type = nn.RNNBase

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dt: float = 1.0,
                 eps: float = 0.0, backend: str = "auto", check_finite: bool = False,
                 batch_first: bool = True, torch_api: bool = False, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.batch_first, self.torch_api = bool(batch_first), bool(torch_api)
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        G, kw = self.GATES * hidden_size, dict(device=device, dtype=dtype)
        self.weight_ih = nn.Parameter(torch.empty(G, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G, **kw))
            self.bias_hh = nn.Parameter(torch.empty(G, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._set_backend(backend)
        self.check_finite = bool(check_finite)
        self.spec = self._make_spec(dt, eps)
        self.reset_parameters()

    def _make_spec(self, dt: float, eps: float) -> HJSpec:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """torch's init: every weight and bias U(−1/√H, 1/√H)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple((self.hidden_size,) for _ in self.state_names)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, bias={self.bias}, dt={self.dt}, "
                f"eps={self.eps}, scheme={self.spec.scheme!r}, backend={self.backend!r}"
                + ("" if self.batch_first else ", batch_first=False")
                + (", torch_api=True" if self.torch_api else ""))

    def forward(self, x: Tensor, initial_state: State | None = None,
                return_final_state: bool = False, dt: Tensor | None = None
                ) -> Union[Tensor, tuple[Tensor, State]]:
        if self.torch_api:
            return self._torch_forward(x, initial_state, dt)
        return super().forward(x, initial_state, return_final_state, dt)

    def _torch_forward(self, x: Tensor, hx: Any, dt: Tensor | None = None
                       ) -> tuple[Tensor, Any]:
        """torch.nn.{RNN,GRU,LSTM}'s call: input (L, B, I)/(B, L, I)/(L, I), hx (1, B, H)."""
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() not in (2, 3):
            raise ValueError(f"{name}: input must be (L, B, I), (B, L, I) with batch_first, "
                             f"or unbatched (L, I), got {engine._shape(x)}")
        unbatched = x.dim() == 2
        xb = x.unsqueeze(0) if unbatched else (x if self.batch_first else x.transpose(0, 1))
        lstm = len(self.state_names) == 2
        state = None
        if hx is not None:
            parts = hx if lstm else (hx,)
            if lstm and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise ValueError(f"{name}: hx must be a tuple (h_0, c_0), got "
                                 f"{type(hx).__name__}")
            want = (1, self.hidden_size) if unbatched else (1, xb.shape[0], self.hidden_size)
            for part_name, t in zip(("h_0", "c_0"), parts):
                if not isinstance(t, Tensor) or tuple(t.shape) != want:
                    raise ValueError(f"{name}: {part_name} must have shape {want} "
                                     f"(num_layers=1, batch, hidden), got {engine._shape(t)}")
            squeezed = tuple(t.reshape(xb.shape[0], self.hidden_size) for t in parts)
            state = squeezed if lstm else squeezed[0]
        if dt is not None:  # irregular time, in the input's layout
            dt = dt.unsqueeze(0) if unbatched else (dt if self.batch_first else dt.transpose(0, 1))
        out, final, _ = engine.run(self, xb, state, time_steps=dt)
        if unbatched:
            out = out[0]
        elif not self.batch_first:
            out = out.transpose(0, 1)
        shape = (1, self.hidden_size) if unbatched else (1, xb.shape[0], self.hidden_size)
        finals = tuple(t.reshape(shape) for t in (final if lstm else (final,)))
        return out, (finals if lstm else finals[0])

    def _const(self) -> dict[str, Tensor]:
        c = {"weight_hh": self.weight_hh}
        if self.bias_hh is not None:
            c["bias_hh"] = self.bias_hh
        return c

    def prepare(self, x: Tensor, state: State
                ) -> tuple[dict[str, Tensor], dict[str, Tensor], State]:
        """``u = W_ih x + b_ih`` for every token (one GEMM); W_hh, b_hh held."""
        return {"u": F.linear(x, self.weight_ih, self.bias_ih)}, self._const(), state

    @classmethod
    def from_torch(cls, module: nn.Module, dt: float = 1.0, eps: float = 0.0,
                   backend: str = "auto", torch_api: bool = True) -> "TorchCell":
        """Copy a one-layer, unidirectional ``torch.nn.{RNN,GRU,LSTM}`` into a drop-in
        replacement: the module's ``batch_first`` layout and, with ``torch_api=True`` (the
        default), its call ``block(input, hx) -> (output, h_n)`` (LSTM ``(output, (h_n,
        c_n))``) with states (1, B, H). At ``dt=1, eps=0`` outputs and final states equal
        the module's. ``torch_api=False`` gives hjseq's ``forward(x, initial_state,
        return_final_state)`` with (B, H) states, in the same layout."""
        name = cls.TORCH.__name__
        if not isinstance(module, cls.TORCH):
            raise TypeError(f"{cls.__name__}.from_torch: module must be a torch.nn.{name}, got "
                            f"{type(module).__name__}")
        if module.num_layers != 1:
            raise ValueError(f"{cls.__name__}.from_torch: module must have num_layers=1, got "
                             f"{module.num_layers}; stack one block per layer instead")
        if module.bidirectional:
            raise ValueError(f"{cls.__name__}.from_torch: bidirectional {name} is not supported "
                             "(a causal HJ flow runs one way); use bidirectional=False")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"{cls.__name__}.from_torch: proj_size={module.proj_size} is not "
                             "supported; use proj_size=0")
        if getattr(module, "nonlinearity", "tanh") != "tanh":
            raise ValueError(f"{cls.__name__}.from_torch: nonlinearity="
                             f"{module.nonlinearity!r} is not supported; use 'tanh'")
        w = module.weight_ih_l0
        block = cls(module.input_size, module.hidden_size, bias=module.bias, dt=dt, eps=eps,
                    backend=backend, batch_first=module.batch_first, torch_api=torch_api,
                    device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if getattr(block, p) is not None:
                    getattr(block, p).copy_(getattr(module, p + "_l0"))
        return block


def recurrent_scan_kernel(cell: str) -> engine.Kernel:
    """Closed-form engine kernel running exactly HJRNN/HJGRU/HJLSTM (their own Hamiltonian
    and scheme; registered in :mod:`hjseq.catalog`) through the fused
    ``hjseq.ops.recurrent_scan`` op (declines while that op is not installed)."""

    def kernel(block: TorchCell, x: Tensor, state: State, noise: Tensor | None,
               backend: str) -> tuple[Tensor, State]:
        if importlib.util.find_spec("hjseq.ops.recurrent_scan") is None:
            raise BackendUnavailable("hjseq.ops.recurrent_scan is not installed")
        from ..ops.recurrent_scan import recurrent_scan
        h0, c0 = state if cell == "lstm" else (state, None)
        out, h_T, c_T = recurrent_scan(cell, x, block.weight_ih, block.weight_hh, block.bias_ih,
                                       block.bias_hh, h0, c0, dt=block.dt, noise=noise,
                                       backend=backend)
        return out, ((h_T, c_T) if cell == "lstm" else h_T)

    kernel.__name__ = f"recurrent_scan_{cell}"
    return kernel
