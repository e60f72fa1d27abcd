"""``FusedDecoder``: one C++ call per token for a whole :class:`~hjseq.models.lm.HJLM` on the
CPU (csrc/cpu/decode_step.cpp).

Decoding a recurrent model reads every weight once per token, so its speed is bounded by
memory bandwidth, and for small models by per-op Python overhead. The fused step removes
the overhead (norm, projections as GEMVs, conv-state shift, Δ projection and softplus, state
update, readout and gate or gated norm, residual, for every block, then the final norm and
head, in one call) and lets the projection weights be stored in fewer bytes:

* ``weights="auto"``: the model's own dtype (float32, float64, or bfloat16 read as float32
  activations);
* ``"float32"``, ``"bfloat16"`` (fp32 accumulation), ``"int8"`` (weight-only, one float32
  scale per output row; :mod:`hjseq.models.quantize`).

It computes exactly ``HJLM.step`` (tested per dtype against it and the full forward):
activations and states in float32 (float64 for a float64 model). Supported block kinds are
:data:`FUSED_KINDS`; a model with other blocks (attention) raises :class:`NotFusable`.

State: a :class:`DecodeState`, the flat list of per-block state tensors (Mamba: conv_state
(B, d_conv − 1, d_inner), ssm_state (B, d_inner, d_state); Mamba-2: conv_state
(B, d_conv − 1, d_ssm + 2·ngroups·d_state), ssm_state (B, heads, headdim, d_state); RNN/GRU:
h (B, H); LSTM: h, c; LSE: none), updated in place by :meth:`FusedDecoder.step`. The conv
states are the models' (B, channels, d_conv − 1) transposed, so that the step's conv runs
along contiguous channels. ``state_from_model`` and
``state_to_model`` convert from and to ``HJLM`` states, so a prompt is prefilled with the
model's own (parallel-scan) forward and continued by the fused step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from hjseq.models.lm import HJLM
from hjseq.models.quantize import WEIGHT_FORMATS, pack_linear

# block kind -> the kernel's layer code (csrc/cpu/decode_step.cpp: enum Kind)
FUSED_KINDS: dict[str, int] = {"mamba": 0, "rnn": 1, "gru": 2, "lstm": 3, "lse": 4,
                               "mamba2": 5}
_N_STATES = {"mamba": 2, "rnn": 1, "gru": 1, "lstm": 2, "lse": 0, "mamba2": 2}
# below this many bytes of weights a step runs on one thread by default (measured: the small
# shape's 2 MB decode 4,952 tok/s on one thread against 1,062 on two on a busy machine)
SMALL_MODEL_BYTES = 16_000_000


class NotFusable(ValueError):
    """The model has a block the fused step does not implement (its ``HJLM.step`` works)."""


def _ext():
    from hjseq.ops._build import load_extension

    return load_extension("decode_step", ["cpu/decode_step.cpp"])


@dataclass
class DecodeState:
    """Per-block state tensors of a batch, flat (see the module docstring), updated in place."""
    tensors: list[Tensor]

    @property
    def batch(self) -> int:
        return self.tensors[0].shape[0] if self.tensors else 0

    def select(self, rows: Sequence[int] | Tensor) -> "DecodeState":
        """The state of the given batch rows (e.g. after some requests finished)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        return DecodeState([t.index_select(0, idx) for t in self.tensors])

    @staticmethod
    def cat(states: Sequence["DecodeState"]) -> "DecodeState":
        """Batch rows of several states, in order."""
        return DecodeState([torch.cat(parts, 0) for parts in zip(*(s.tensors for s in states))])


def _conv(m: Any, T: torch.dtype) -> dict[str, Tensor]:
    """A depthwise conv1d's weight transposed to (d_conv, channels), and its bias."""
    out = {"conv_w": m.conv1d.weight.detach()[:, 0].t().to(T).contiguous()}
    if m.conv1d.bias is not None:
        out["conv_b"] = m.conv1d.bias.detach().to(T)
    return out


class FusedDecoder:
    """Fused one-token step for ``model`` (an :class:`HJLM` on the CPU). The model's weights
    are copied (quantised if asked) when the decoder is built; later changes to the model
    are not seen. One decoder must not step from two threads at once (shared scratch).

    ``threads``: threads per step (None: one for a model under :data:`SMALL_MODEL_BYTES` of
    weights, else torch's intra-op count). Each large projection is a parallel region; on a
    machine busier than its cores, ``threads=1`` (or starting the process with
    ``OMP_WAIT_POLICY=PASSIVE``) avoids regions that wait for a time slice."""

    def __init__(self, model: HJLM, weights: str = "auto", threads: int | None = None) -> None:
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
        kinds = [layer.kind for layer in model.layers]
        bad = sorted({k for k in kinds if k not in FUSED_KINDS})
        if bad:
            raise NotFusable(f"FusedDecoder: block kind(s) {bad} have no fused step (fused: "
                             f"{sorted(FUSED_KINDS)}); decode with HJLM.step instead")
        p = model.embedding.weight
        if p.device.type != "cpu":
            raise ValueError(f"FusedDecoder runs on the CPU; the model is on {p.device}")
        self.model_dtype = p.dtype
        self.dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        if weights == "auto":
            weights = {torch.float64: "float64", torch.bfloat16: "bfloat16"}.get(p.dtype,
                                                                                 "float32")
        if self.dtype == torch.float64 and weights != "float64":
            raise ValueError(f"a float64 model decodes with float64 weights; got weights="
                             f"{weights!r} (cast the model to float32 first)")
        if self.dtype == torch.float32 and weights == "float64":
            raise ValueError("weights='float64' needs a float64 model")
        self.weights = weights
        self.kinds = kinds
        self.vocab_size = model.config.vocab_size
        self._shapes = []
        T = self.dtype
        with torch.no_grad():
            top = {"embedding": p.detach().to(T).contiguous(),
                   "norm_f": model.norm_f.weight.detach().to(T),
                   "norm_f_eps": torch.tensor(float(model.norm_f.eps), dtype=torch.float64)}
            top.update(pack_linear("lm_head", model.lm_head.weight, None, weights, T))
            tensors, scalars = [], []
            for layer in model.layers:
                t, s, shapes = self._pack_layer(layer, weights, T)
                tensors.append(t)
                scalars.append(s)
                self._shapes.append(shapes)
        self._model = _ext().Model(top, tensors, scalars, "float64" if T == torch.float64
                                   else "float32")
        if threads is not None and not (isinstance(threads, int) and threads >= 1):
            raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
        if threads is None and self.weight_bytes < SMALL_MODEL_BYTES:
            threads = 1  # cache-resident weights: a parallel region costs more than it saves
        self.threads = threads
        if threads is not None:
            self._model.set_threads(threads)

    @staticmethod
    def _pack_layer(layer: Any, weights: str, T: torch.dtype
                    ) -> tuple[dict[str, Tensor], dict[str, float], list[tuple[int, ...]]]:
        m = layer.mixer
        t: dict[str, Tensor] = {"norm": layer.norm.weight.detach().to(T)}
        s: dict[str, float] = {"kind": float(FUSED_KINDS[layer.kind]),
                               "norm_eps": float(layer.norm.eps)}
        lin = lambda name, mod: t.update(pack_linear(  # noqa: E731
            name, mod.weight, mod.bias, weights, T))
        if layer.kind == "mamba":
            for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
                lin(name, getattr(m, name))
            t.update(_conv(m, T))
            t["A"] = -torch.exp(m.A_log.detach().to(T))
            t["D"] = m.D.detach().to(T)
            s["zoh"] = float(m.scheme == "zoh")
            shapes = [(m.d_conv - 1, m.d_inner), (m.d_inner, m.d_state)]
        elif layer.kind == "mamba2":
            if m.scheme not in ("euler_b", "zoh"):
                raise NotFusable(f"FusedDecoder: mamba2 scheme={m.scheme!r} has no fused step "
                                 f"(fused: 'euler_b', 'zoh'); decode with HJLM.step instead")
            for name in ("in_proj", "out_proj"):
                lin(name, getattr(m, name))
            t.update(_conv(m, T))
            if m.rmsnorm:
                t["gnorm"] = m.norm.weight.detach().to(T)
                s.update(norm_before_gate=float(m.norm.norm_before_gate),
                         gnorm_eps=float(m.norm.eps))
            else:
                s.update(norm_before_gate=0.0, gnorm_eps=0.0)
            t["A"] = -torch.exp(m.A_log.detach().to(T))
            t["dt_bias"] = m.dt_bias.detach().to(T)
            D = m.D.detach().to(T)  # per head (H,) or per channel (d_ssm,): per channel here
            t["D"] = D if m.D_has_hdim else D.repeat_interleave(m.headdim)
            s.update(headdim=float(m.headdim), ngroups=float(m.ngroups),
                     zoh=float(m.scheme == "zoh"), dt_lo=m.dt_limit[0], dt_hi=m.dt_limit[1])
            shapes = [(m.d_conv - 1, m.conv_dim), (m.nheads, m.headdim, m.d_state)]
        elif layer.kind in ("rnn", "gru", "lstm"):
            c = m.cell
            t.update(pack_linear("w_ih", c.weight_ih, c.bias_ih, weights, T))
            t.update(pack_linear("w_hh", c.weight_hh, c.bias_hh, weights, T))
            lin("out_proj", m.out_proj)
            s["dt"] = float(c.dt)
            shapes = [(c.hidden_size,)] * _N_STATES[layer.kind]
        else:  # lse
            lin("in_proj", m.in_proj)
            lin("out_proj", m.out_proj)
            s.update(units=float(m.n_units), atoms=float(m.n_atoms), eps=float(m.eps))
            shapes = []
        return t, s, shapes

    # ------------------------------------------------------------------ state
    def zero_state(self, batch: int) -> DecodeState:
        """The state before the first token, for ``batch`` rows."""
        return DecodeState([torch.zeros(batch, *shape, dtype=self.dtype)
                            for shapes in self._shapes for shape in shapes])

    def state_from_model(self, states: Sequence[Any], batch: int) -> DecodeState:
        """A :class:`DecodeState` from ``HJLM`` per-block states (``None`` = zeros)."""
        out = []
        for kind, shapes, st in zip(self.kinds, self._shapes, states):
            if kind == "lse":
                continue
            parts = (st,) if isinstance(st, Tensor) else st
            if st is None:
                parts = [None] * len(shapes)
            for i, (shape, part) in enumerate(zip(shapes, parts)):
                if part is not None and i == 0 and kind in ("mamba", "mamba2"):
                    part = part.transpose(1, 2)  # conv_state (B, C, W − 1) -> (B, W − 1, C)
                out.append(torch.zeros(batch, *shape, dtype=self.dtype) if part is None
                           else part.detach().to(self.dtype).contiguous().clone())
        return DecodeState(out)

    def state_to_model(self, state: DecodeState) -> list[Any]:
        """``HJLM`` per-block states from a :class:`DecodeState` (Mamba's and Mamba-2's
        ssm_state in the model's accumulation dtype, the rest in the model dtype)."""
        it = iter(state.tensors)
        res: list[Any] = []
        md, acc = self.model_dtype, self.dtype
        for kind in self.kinds:
            if kind == "lse":
                res.append(None)
            elif kind in ("mamba", "mamba2"):
                conv = next(it).transpose(1, 2).to(md).contiguous()
                res.append((conv, next(it).to(acc)))
            elif kind == "lstm":
                res.append((next(it).to(md), next(it).to(md)))
            else:
                res.append(next(it).to(md))
        return res

    # ------------------------------------------------------------------ decoding
    @property
    def weight_bytes(self) -> int:
        """Bytes of weights the step reads per token (all blocks, final norm and head;
        the embedding is read one row per token and not counted)."""
        return int(self._model.weight_bytes())

    def step(self, ids: Tensor, state: DecodeState) -> Tensor:
        """Logits ``(B, vocab)`` after tokens ``ids (B,)``; ``state`` advances in place."""
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype not in (torch.long,
                                                                              torch.int32):
            raise ValueError(f"ids must be an int64 tensor (B,), got "
                             f"{getattr(ids, 'shape', type(ids).__name__)}")
        if ids.shape[0] != state.batch and state.tensors:
            raise ValueError(f"ids has batch {ids.shape[0]} but the state has {state.batch}")
        return self._model.step(ids.long(), state.tensors)

    @torch.no_grad()
    def prefill(self, model: HJLM, prompts: Sequence[Sequence[int]]) -> tuple[Tensor,
                                                                             DecodeState]:
        """Varlen prefill: each prompt runs through ``model``'s parallel forward (prompts of
        equal length together), and the states are gathered into one batch. Returns the
        logits after each prompt's last token ``(B, vocab)`` and the batch's state."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt must hold at least one token")
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        order, logits, parts = [], [], []
        dev = model.embedding.weight.device
        for rows in by_len.values():
            ids = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=dev)
            lg, st = model(ids, return_state=True)
            logits.append(lg[:, -1].to(self.dtype))
            parts.append(self.state_from_model(st, len(rows)))
            order.extend(rows)
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(logits)[inv], DecodeState.cat(parts).select(inv)


def try_fused(model: HJLM, weights: str = "auto") -> FusedDecoder | None:
    """A :class:`FusedDecoder` for ``model``, or None where it cannot run (a block kind
    without a fused step, a non-CPU model, or the C++ extension unavailable)."""
    from hjseq.ops._registry import BackendUnavailable

    try:
        return FusedDecoder(model, weights)
    except (NotFusable, BackendUnavailable):
        return None
    except ValueError as e:
        if "runs on the CPU" in str(e):
            return None
        raise
