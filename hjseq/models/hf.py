"""Import a Hugging Face ``MambaForCausalLM`` or ``Mamba2ForCausalLM`` checkpoint into
:class:`~hjseq.models.lm.HJLM`.

HF's model is ``embeddings → [x ← x + MambaMixer(RMSNorm(x))] × n → norm_f → lm_head``
(``transformers/models/mamba/modeling_mamba.py``), the residual arrangement of ``HJLM``; its
``MambaMixer`` has mamba_ssm's parameter names, which ``HJMamba`` keeps. So the import is a
config translation and a key rename:

    backbone.embeddings.weight          -> embedding.weight
    backbone.layers.{i}.norm.weight     -> layers.{i}.norm.weight
    backbone.layers.{i}.mixer.*         -> layers.{i}.mixer.*      (in_proj, conv1d, x_proj,
    backbone.norm_f.weight              -> norm_f.weight            dt_proj, A_log, D, out_proj)
    lm_head.weight                      -> lm_head.weight           (tied: the embedding)

The SSM runs with ``scheme="euler_b"``, HF's (and mamba_ssm's) discretization.

``Mamba2ForCausalLM`` has the same residual arrangement and key layout; its ``Mamba2Mixer``
(``in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj``) loads into ``HJMamba2``
(block kind ``mamba2``). :func:`load_hf` reads either, chosen by the config's ``model_type``
(:data:`MODEL_TYPES`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from hjseq.models.config import BlockSpec, ModelConfig


def hf_config_to_model_config(hf: Mapping[str, Any], vocab_size: int | None = None) -> ModelConfig:
    """``ModelConfig`` equivalent to a HF ``MambaConfig`` dict. ``vocab_size`` (the embedding's
    row count) overrides the config's, which some checkpoints pad differently."""
    if hf.get("model_type", "mamba") != "mamba":
        raise ValueError(f"config model_type is {hf.get('model_type')!r}; from_hf_mamba reads "
                         "'mamba' (MambaForCausalLM) checkpoints only")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r} is not supported: HJMamba uses silu, as Mamba does")
    for key in ("hidden_size", "num_hidden_layers"):
        if key not in hf:
            raise ValueError(f"HF Mamba config lacks {key!r}")
    d_model = int(hf["hidden_size"])
    dt_rank = hf.get("time_step_rank", "auto")
    options = {
        "d_state": int(hf.get("state_size", 16)),
        "d_conv": int(hf.get("conv_kernel", 4)),
        "expand": hf.get("expand", 2),
        "dt_rank": dt_rank if dt_rank == "auto" else int(dt_rank),
        "conv_bias": bool(hf.get("use_conv_bias", True)),
        "bias": bool(hf.get("use_bias", False)),
        "scheme": "euler_b",
    }
    if "intermediate_size" in hf and int(hf["intermediate_size"]) != int(options["expand"] * d_model):
        raise ValueError(f"intermediate_size={hf['intermediate_size']} != expand * hidden_size; "
                         "HJMamba needs d_inner = expand * d_model")
    return ModelConfig(
        d_model=d_model,
        blocks=[BlockSpec("mamba", dict(options)) for _ in range(int(hf["num_hidden_layers"]))],
        vocab_size=int(vocab_size if vocab_size is not None else hf.get("vocab_size", 50280)),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        residual_in_fp32=bool(hf.get("residual_in_fp32", True)),
    )


def _hf_float(v: Any) -> float:
    """A float from a HF config.json, where transformers writes inf as {"__float__": "Infinity"}."""
    return float(v["__float__"] if isinstance(v, Mapping) and "__float__" in v else v)


def hf_mamba2_config_to_model_config(hf: Mapping[str, Any],
                                     vocab_size: int | None = None) -> ModelConfig:
    """``ModelConfig`` equivalent to a HF ``Mamba2Config`` dict (blocks of kind ``mamba2``)."""
    if hf.get("model_type", "mamba2") != "mamba2":
        raise ValueError(f"config model_type is {hf.get('model_type')!r}, not 'mamba2'")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r} is not supported: HJMamba2 uses silu (Mamba-2's)")
    for key in ("hidden_size", "num_hidden_layers"):
        if key not in hf:
            raise ValueError(f"HF Mamba2 config lacks {key!r}")
    d_model, expand = int(hf["hidden_size"]), hf.get("expand", 2)
    heads, headdim = int(hf.get("num_heads", 128)), int(hf.get("head_dim", 64))
    if heads * headdim != int(expand * d_model):
        raise ValueError(f"num_heads * head_dim = {heads} * {headdim} must equal expand * "
                         f"hidden_size = {int(expand * d_model)} (as HF's Mamba2Config checks)")
    options: dict[str, Any] = {
        "d_state": int(hf.get("state_size", 128)),
        "d_conv": int(hf.get("conv_kernel", 4)),
        "expand": expand,
        "headdim": headdim,
        "ngroups": int(hf.get("n_groups", 8)),
        "conv_bias": bool(hf.get("use_conv_bias", True)),
        "bias": bool(hf.get("use_bias", False)),
        "chunk_size": int(hf.get("chunk_size", 256)),
        "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "scheme": "euler_b",
    }
    limit = tuple(_hf_float(v) for v in hf.get("time_step_limit", (0.0, float("inf"))))
    if limit != (0.0, float("inf")):
        options["dt_limit"] = list(limit)
    return ModelConfig(
        d_model=d_model,
        blocks=[BlockSpec("mamba2", dict(options)) for _ in range(int(hf["num_hidden_layers"]))],
        vocab_size=int(vocab_size if vocab_size is not None else hf.get("vocab_size", 32768)),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        residual_in_fp32=bool(hf.get("residual_in_fp32", True)),
    )


MODEL_TYPES = {"mamba": hf_config_to_model_config, "mamba2": hf_mamba2_config_to_model_config}
"""The HF ``model_type`` values :func:`load_hf` reads, each with its config translation."""


_RENAMES = [
    (re.compile(r"^(backbone\.)?embeddings?\.weight$"), "embedding.weight"),
    (re.compile(r"^(backbone\.)?layers\.(\d+)\.(norm|mixer)\.(.+)$"), r"layers.\2.\3.\4"),
    (re.compile(r"^(backbone\.)?norm_f\.weight$"), "norm_f.weight"),
    (re.compile(r"^lm_head\.weight$"), "lm_head.weight"),
]


def convert_hf_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a HF ``MambaForCausalLM`` (or ``MambaModel``) state dict to ``HJLM``'s keys."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        for pattern, repl in _RENAMES:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            raise KeyError(f"unexpected key {key!r} in the HF Mamba state dict")
    return out


def _read_weights(directory: Path) -> dict[str, Tensor]:
    st, index, binf = (directory / "model.safetensors", directory / "model.safetensors.index.json",
                       directory / "pytorch_model.bin")
    if st.is_file() or index.is_file():
        from safetensors.torch import load_file

        if st.is_file():
            return load_file(str(st))
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, Tensor] = {}
        for shard in shards:
            sd.update(load_file(str(directory / shard)))
        return sd
    if binf.is_file():
        return torch.load(binf, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory}: no model.safetensors(.index.json) or pytorch_model.bin")


def load_hf(cls: type, path_or_state_dict: str | Path | Mapping[str, Tensor],
            config: Mapping[str, Any] | None = None, model_type: str | None = None):
    """See :meth:`hjseq.models.lm.HJLM.from_hf`. ``config`` (a HF config dict) is required
    with a state dict and, when given with a directory, replaces its config.json. The
    architecture is the config's ``model_type`` (one of :data:`MODEL_TYPES`); ``model_type``
    given here insists on one."""
    if isinstance(path_or_state_dict, (str, Path)):
        directory = Path(path_or_state_dict)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: not a directory; pass a save_pretrained "
                                    "directory of a HF model or a state dict plus config")
        if config is None:
            cfg_path = directory / "config.json"
            if not cfg_path.is_file():
                raise FileNotFoundError(f"{cfg_path} not found; pass config= (the HF config dict)")
            config = json.loads(cfg_path.read_text())
        raw = _read_weights(directory)
    else:
        if config is None:
            raise ValueError("loading a state dict needs config=, the HF model's config as a "
                             "dict (e.g. model.config.to_dict())")
        raw = dict(path_or_state_dict)
    kind = config.get("model_type", model_type or "mamba")
    if model_type is not None and kind != model_type:
        raise ValueError(f"config model_type is {kind!r}; from_hf_{model_type} reads "
                         f"{model_type!r} checkpoints only (HJLM.from_hf reads any of "
                         f"{sorted(MODEL_TYPES)})")
    if kind not in MODEL_TYPES:
        raise ValueError(f"config model_type is {kind!r}; HJLM.from_hf reads "
                         f"{sorted(MODEL_TYPES)}")
    sd = convert_hf_state_dict(raw)
    if "embedding.weight" not in sd:
        raise KeyError("the HF state dict has no embeddings weight")
    mcfg = MODEL_TYPES[kind](config, vocab_size=sd["embedding.weight"].shape[0])
    model = cls(mcfg)
    if mcfg.tie_embeddings or "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["embedding.weight"]
    dtype = sd["embedding.weight"].dtype
    model.to(dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise KeyError(f"HF {kind} checkpoint does not match the model built from its config: "
                       f"missing {missing}, unexpected {unexpected}")
    if isinstance(path_or_state_dict, (str, Path)):  # the directory's tokenizer, if it has one
        from hjseq.models.tokenizer import check_fits, load_tokenizer

        model.tokenizer = load_tokenizer(path_or_state_dict)
        if model.tokenizer is not None:
            check_fits(model.tokenizer, mcfg.vocab_size, str(path_or_state_dict))
    return model


def load_hf_mamba(cls: type, path_or_state_dict: str | Path | Mapping[str, Tensor],
                  config: Mapping[str, Any] | None = None):
    """See :meth:`hjseq.models.lm.HJLM.from_hf_mamba`: :func:`load_hf` for ``mamba`` only."""
    return load_hf(cls, path_or_state_dict, config, model_type="mamba")
