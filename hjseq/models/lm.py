"""``HJLM``: a language model whose blocks are HJ discretizations, built from a config.

    tokens (B, L) ─► embedding ─► [x ← x + mixer_i(RMSNorm_i(x))]_{i=1..n} ─► RMSNorm ─► head

This is the residual arrangement of Hugging Face's ``MambaForCausalLM`` (pre-norm, final
``norm_f``, head tied to the embedding), so a HF Mamba checkpoint loads into it unchanged
(:mod:`hjseq.models.hf`). The depth direction is itself an Euler discretization with unit
step of ``ẋ = F(x, θ(t))``, the layer index being time.

Every mixer follows the recurrent-block protocol of :mod:`hjseq.nn`:
``forward(x, initial_state=None, return_final_state=False)`` on ``(B, L, d)`` and
``step(x_t, state) -> (y_t, state)`` on ``(B, d)``; the state is ``None`` before the first
token. Recurrent blocks carry an O(1) state, attention a KV cache, the LSE MLP no state.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hjseq import hopf

from hjseq.models.config import BlockSpec, ConfigError, ModelConfig, load_config
from hjseq.models.kinds import KindError, get_kind
from hjseq.nn.attention import HJAttention

State = list[Any]  # one entry per block; None = "before the first token"


class RMSNorm(nn.Module):
    """``y = w ⊙ x / sqrt(mean(x²) + eps)`` over the last dim, computed in float32 (as HF's
    ``MambaRMSNorm``) and returned in the input dtype. Shape ``(..., d)`` → ``(..., d)``."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.to(torch.float32) if dtype in (torch.float16, torch.bfloat16) else x
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LSEMLP(nn.Module):
    """The channel-mixing block made of LSE layers (the paper's Hopf–Cole layer):

        z = W_in x + b_in                       reshaped to (n_units, n_atoms)
        u_k = ε log Σ_j exp(z_kj / ε)            k = 1..n_units     (ε = 0: max_j z_kj)
        y = W_out u

    Unit ``k`` is exactly ``LSELayer(d_model, n_atoms, eps)`` with atoms ``W_in[k, j]``,
    ``b_in[k, j]``: the discrete viscous HJ solution ``f_ε`` of ``u_t + |∇u|² = ε Δu`` at x
    (up to the quadratic ``|x|²/4t``). At ε → 0 it is a maxout network (the tropical limit);
    with ``n_atoms = 2`` and one zero atom a unit is softplus. Shape ``(B, L, d)`` → same.
    """

    def __init__(self, d_model: int, n_units: int | None = None, n_atoms: int = 4,
                 eps: float = 1.0) -> None:
        super().__init__()
        self.n_units = n_units or 2 * d_model
        self.n_atoms = n_atoms
        self.eps = float(eps)
        self.in_proj = nn.Linear(d_model, self.n_units * n_atoms)
        self.out_proj = nn.Linear(self.n_units, d_model, bias=False)

    def unit_outputs(self, x: Tensor) -> Tensor:
        """``u (..., n_units)``: each unit's ``f_ε(x)``."""
        z = self.in_proj(x).unflatten(-1, (self.n_units, self.n_atoms))
        return hopf.smooth_max(z, self.eps)

    def forward(self, x: Tensor, initial_state: None = None,
                return_final_state: bool = False) -> Tensor | tuple[Tensor, None]:
        y = self.out_proj(self.unit_outputs(x))
        return (y, None) if return_final_state else y

    def step(self, x_t: Tensor, state: None = None) -> tuple[Tensor, None]:
        return self.out_proj(self.unit_outputs(x_t)), None

    def atoms(self, t: float = 1.0) -> tuple[Tensor, Tensor]:
        """Hopf–Cole atoms of every unit at time t: ``y (n_units, n_atoms, d)``, ``g (n_units,
        n_atoms)`` with ``y = 2tW``, ``g = −b − t|W|²``."""

        W = self.in_proj.weight.unflatten(0, (self.n_units, self.n_atoms))
        b = self.in_proj.bias.unflatten(0, (self.n_units, self.n_atoms))
        return hopf.atoms_from_affine(W, b, t)

    def extra_repr(self) -> str:
        return f"n_units={self.n_units}, n_atoms={self.n_atoms}, eps={self.eps}"


class RecurrentMixer(nn.Module):
    """An ``HJRNN``/``HJGRU``/``HJLSTM`` cell (``d_model → hidden``) followed by a linear map
    back to ``d_model``. Same protocol as the cell; the state is the cell's state."""

    def __init__(self, cell: nn.Module, hidden_size: int, d_model: int) -> None:
        super().__init__()
        self.cell = cell
        self.out_proj = nn.Linear(hidden_size, d_model, bias=False)

    def forward(self, x: Tensor, initial_state: Any = None, return_final_state: bool = False):
        out = self.cell(x, initial_state=initial_state, return_final_state=return_final_state)
        if return_final_state:
            h, state = out
            return self.out_proj(h), state
        return self.out_proj(out)

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        h, state = _step_block(self.cell, x_t, state)
        return self.out_proj(h), state


class AttentionMixer(HJAttention):
    """Causal ``HJAttention`` under the recurrent-block protocol: the "state" is its KV
    cache (``prefill`` gives it after a prompt, ``step`` grows it by one key per token)."""

    def forward(self, x: Tensor, initial_state: Any = None, return_final_state: bool = False):
        if initial_state is not None:  # continue after a cached prefix, token by token
            ys, cache = [], initial_state
            for t in range(x.shape[1]):
                y_t, cache = self.step(x[:, t], cache)
                ys.append(y_t)
            y = torch.stack(ys, 1)
            return (y, cache) if return_final_state else y
        if return_final_state:
            return self.prefill(x)
        return super().forward(x)


def _step_block(block: nn.Module, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
    """``block.step`` with ``state=None`` meaning "before the first token": that first step
    is a length-1 forward from the block's own zero initial state, which is the same map."""
    if state is None:
        y, state = block(x_t.unsqueeze(1), return_final_state=True)
        return y[:, 0], state
    return block.step(x_t, state)


def build_mixer(spec: BlockSpec, d_model: int) -> nn.Module:
    """The mixer module for one block spec, built by its registered kind
    (:mod:`hjseq.models.kinds`; hjseq's own kinds are in :mod:`hjseq.catalog`)."""
    try:
        kind = get_kind(spec.kind)
    except KindError as e:
        raise ConfigError("<model>", "kind", str(e)) from None
    return kind.build(d_model, dict(spec.options))


class Block(nn.Module):
    """Pre-norm residual block ``x + mixer(RMSNorm(x))`` (HF ``MambaBlock`` arrangement)."""

    def __init__(self, spec: BlockSpec, d_model: int, norm_eps: float,
                 residual_in_fp32: bool = False) -> None:
        super().__init__()
        self.kind = spec.kind
        self.options = dict(spec.options)
        self.residual_in_fp32 = residual_in_fp32
        self.norm = RMSNorm(d_model, norm_eps)
        self.mixer = build_mixer(spec, d_model)

    def _residual(self, x: Tensor) -> Tensor:
        return x.to(torch.float32) if self.residual_in_fp32 else x

    def forward(self, x: Tensor, state: Any = None, return_state: bool = False):
        h = self.norm(x.to(self.norm.weight.dtype))
        if return_state or state is not None:
            y, state = self.mixer(h, initial_state=state, return_final_state=True)
            out = self._residual(x) + y
            return (out, state) if return_state else out
        return self._residual(x) + self.mixer(h)

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, state = _step_block(self.mixer, self.norm(x_t.to(self.norm.weight.dtype)), state)
        return self._residual(x_t) + y, state

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"kind={self.kind!r}" + (f", {opts}" if opts else "")


class HJLM(nn.Module):
    """Language model from a :class:`~hjseq.models.config.ModelConfig` (or a TOML/JSON path,
    or a dict; see :func:`~hjseq.models.config.load_config`).

    ``forward(ids (B, L) long) -> logits (B, L, vocab)``; with ``return_state=True`` also the
    per-block states after the last token, which ``step`` continues from.
    ``step(ids_t (B,), state) -> (logits (B, vocab), state)``: one token, O(1) work for
    recurrent blocks (a KV cache for attention). ``state=None`` starts from scratch.
    """

    def __init__(self, config: ModelConfig | Mapping[str, Any] | str | Path) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            config = load_config(config).model
        self.config = config
        d = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, d)
        self.layers = nn.ModuleList(
            Block(b, d, config.norm_eps, config.residual_in_fp32) for b in config.blocks)
        self.norm_f = RMSNorm(d, config.norm_eps)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.02)
        # GPT-2/Mamba rescaling: each residual branch's output map shrinks by 1/sqrt(depth)
        # so the residual stream's variance does not grow with the number of blocks.
        scale = 1.0 / math.sqrt(len(self.layers))
        for layer in self.layers:
            out = getattr(layer.mixer, "out_proj", None)
            if isinstance(out, nn.Linear):
                with torch.no_grad():
                    out.weight.mul_(scale)

    def _check_ids(self, ids: Tensor, name: str, ndim: int) -> None:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"{name} must be an integer (long) tensor of token ids")
        if ids.dim() != ndim:
            shape = "(B, L)" if ndim == 2 else "(B,)"
            raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"{name} holds ids outside [0, vocab_size={self.config.vocab_size})")

    def forward(self, ids: Tensor, state: State | None = None, return_state: bool = False):
        self._check_ids(ids, "ids", 2)
        x = self.embedding(ids)
        states: State = []
        for i, layer in enumerate(self.layers):
            s = None if state is None else state[i]
            if return_state:
                x, s = layer(x, s, return_state=True)
                states.append(s)
            else:
                x = layer(x, s)
        logits = self.lm_head(self.norm_f(x.to(self.norm_f.weight.dtype)))
        return (logits, states) if return_state else logits

    @torch.no_grad()
    def step(self, ids_t: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        self._check_ids(ids_t, "ids_t", 1)
        x = self.embedding(ids_t)
        state = [None] * len(self.layers) if state is None else list(state)
        for i, layer in enumerate(self.layers):
            x, state[i] = layer.step(x, state[i])
        return self.lm_head(self.norm_f(x.to(self.norm_f.weight.dtype))), state

    def num_params(self) -> int:
        """Number of distinct parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """A table of parameters per block, plus embedding/norm/head and the total."""
        rows = [("embedding" + (" (tied head)" if self.config.tie_embeddings else ""),
                 self.embedding.weight.numel())]
        for i, layer in enumerate(self.layers):
            opts = ", ".join(f"{k}={v}" for k, v in layer.options.items())
            rows.append((f"{i:>2} {layer.kind}" + (f" ({opts})" if opts else ""),
                         sum(p.numel() for p in layer.parameters())))
        rows.append(("norm_f", self.norm_f.weight.numel()))
        if not self.config.tie_embeddings:
            rows.append(("lm_head", self.lm_head.weight.numel()))
        width = max(len(r[0]) for r in rows)
        lines = [f"{'block':<{width}}  {'params':>12}", "-" * (width + 14)]
        lines += [f"{name:<{width}}  {n:>12,}" for name, n in rows]
        lines += ["-" * (width + 14), f"{'total':<{width}}  {self.num_params():>12,}"]
        return "\n".join(lines)

    # ---- hjseq's own format: config.json + model.safetensors -------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``."""
        from safetensors.torch import save as st_save

        from hjseq.models.checkpoint import atomic_write_bytes

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            sd.pop("lm_head.weight")  # shared with embedding.weight
        atomic_write_bytes(directory / "model.safetensors", st_save(sd, metadata={"format": "pt"}))
        cfg = {"model_type": "hjseq", **self.config.to_dict()}
        atomic_write_bytes(directory / "config.json", json.dumps(cfg, indent=2).encode())

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> "HJLM":
        """Load a model written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / "config.json", directory / "model.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: expected a directory written by "
                                        "HJLM.save_pretrained (config.json + model.safetensors)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.pop("model_type", None) != "hjseq":
            raise ValueError(f"{cfg_path} is not an hjseq config (model_type != 'hjseq'); "
                             "for a Hugging Face Mamba checkpoint use HJLM.from_hf_mamba")
        model = cls(ModelConfig.from_saved(cfg, str(cfg_path), "config"))
        sd = load_file(str(w_path), device=map_location)
        if model.config.tie_embeddings:
            sd["lm_head.weight"] = sd["embedding.weight"]
        model.load_state_dict(sd)
        return model

    @classmethod
    def from_hf_mamba(cls, path_or_state_dict: str | Path | Mapping[str, Tensor],
                      config: Mapping[str, Any] | None = None) -> "HJLM":
        """Load a Hugging Face ``MambaForCausalLM`` (directory with ``config.json`` and
        ``model.safetensors`` or ``pytorch_model.bin``, or a state dict plus its HF config
        dict). The result reproduces HF's logits. See :mod:`hjseq.models.hf`."""
        from hjseq.models.hf import load_hf_mamba

        return load_hf_mamba(cls, path_or_state_dict, config)

    @classmethod
    def from_hf(cls, path_or_state_dict: str | Path | Mapping[str, Tensor],
                config: Mapping[str, Any] | None = None) -> "HJLM":
        """Load a Hugging Face ``MambaForCausalLM`` or ``Mamba2ForCausalLM`` checkpoint (as
        :meth:`from_hf_mamba`), the architecture read off the config's ``model_type``
        (``mamba``, ``mamba2``: blocks of kind ``mamba`` / ``mamba2``). Reproduces HF's logits."""
        from hjseq.models.hf import load_hf

        return load_hf(cls, path_or_state_dict, config)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross entropy in nats; logits ``(B, L, V)``, targets ``(B, L)``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
