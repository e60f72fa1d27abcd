"""Model and training configuration: parsed from TOML, JSON or a dict, validated with errors
that name the source and the key (``small.toml: model.blocks[2].n_heads: expected int, got
str 'four'``).

A model config lists its blocks, each naming its kind and options::

    [model]
    d_model = 128
    repeat = 2                       # the block list below is repeated twice
    blocks = [{kind = "mamba", d_state = 16},
              {kind = "attention", n_heads = 4},
              {kind = "lse", n_units = 256, n_atoms = 4, eps = 0.5, repeat = 1}]

In Python the list form ``blocks=[{"kind": "mamba"}, {"kind": "attention", "n_heads": 4}] * n``
works as it reads. A block's own ``repeat`` repeats that entry in place; the model-level
``repeat`` repeats the whole list.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from hjseq.models.kinds import KindError, canonical_kind, get_kind, known_kinds
from hjseq.schemes import SCHEMES


class ConfigError(ValueError):
    """A configuration problem; the message names the source file (or ``<dict>``) and key."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


# Block kinds (their names, options and builders) live in one registry,
# ``hjseq.models.kinds``; hjseq's own are registered in ``hjseq.catalog``.


CONFIG_VERSION = 2
"""Version of the saved model config. 2: attention blocks default to RoPE (``pos =
"rope"``); configs saved before (no ``config_version``) had position-free attention, and
:meth:`ModelConfig.from_saved` keeps them so."""


@dataclass
class BlockSpec:
    """One residual block: its kind (a registered name, see :mod:`hjseq.models.kinds`, or
    ``"package.module:ClassName"``) and its options."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.options}


@dataclass
class ModelConfig:
    """A byte-level (or ``vocab_size``) language model: embedding, ``blocks`` as pre-norm
    residual blocks ``x + mixer(RMSNorm(x))``, a final RMSNorm and a (tied) LM head."""

    d_model: int
    blocks: list[BlockSpec]
    vocab_size: int = 256
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    residual_in_fp32: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "blocks"}
        d["blocks"] = [b.to_dict() for b in self.blocks]
        d["config_version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_saved(cls, data: Mapping[str, Any], source: str = "<dict>",
                   prefix: str = "model") -> "ModelConfig":
        """A config read back from a checkpoint or ``config.json``. One saved before
        ``config_version`` 2 keeps its meaning: its attention blocks had no positions."""
        data = dict(data)
        if "config_version" not in data:
            data["blocks"] = [dict(b, pos="none") if isinstance(b, Mapping)
                              and b.get("kind") == "attention" and "pos" not in b else b
                              for b in data.get("blocks", [])]
            data["config_version"] = CONFIG_VERSION
        return cls.from_dict(data, source, prefix)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>",
                  prefix: str = "model") -> "ModelConfig":
        return _parse_model(data, source, prefix)


@dataclass
class TrainConfig:
    """Optimisation and data settings of ``hjseq train`` (the ``[train]`` table)."""

    steps: int = 1000
    batch_size: int = 16          # global batch (sequences per optimizer step), all ranks together
    seq_len: int = 256
    accum_steps: int = 1          # micro-batches per optimizer step (per rank)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1     # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0        # max global grad norm; 0 disables
    bf16: bool = False            # bf16 autocast for forward/backward
    eval_interval: int = 200
    eval_batches: int = 8
    log_interval: int = 10
    checkpoint_interval: int = 500
    seed: int = 0
    val_fraction: float = 0.05    # share of files held out for validation
    data: str | None = None       # file or directory; None = the Python standard library
    sample_chars: int = 300       # length of the sample printed at the end
    threads: int = 0              # torch intra-op CPU threads; 0 = torch's default
    tokenizer: str = "bytes"      # "bytes" or "bpe:N" (see hjseq.models.tokenizer)
    parallel: str = "ddp"         # under torchrun: "ddp" or "fsdp" (see hjseq.models.parallel)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>",
                  prefix: str = "train") -> "TrainConfig":
        types = {"data": (str, type(None))}
        kwargs: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(source, f"{prefix}.{key}",
                                  f"unknown option; known: {', '.join(sorted(known))}")
            default = known[key].default
            kwargs[key] = _check_type(value, types.get(key, (type(default),)), source,
                                      f"{prefix}.{key}")
        cfg = cls(**kwargs)
        for key in ("steps", "batch_size", "seq_len", "accum_steps", "eval_interval",
                    "eval_batches", "log_interval", "checkpoint_interval"):
            if getattr(cfg, key) < 1:
                raise ConfigError(source, f"{prefix}.{key}", f"must be >= 1, got {getattr(cfg, key)}")
        if cfg.threads < 0:
            raise ConfigError(source, f"{prefix}.threads", f"must be >= 0, got {cfg.threads}")
        if not 0 < cfg.val_fraction < 1:
            raise ConfigError(source, f"{prefix}.val_fraction", "must be in (0, 1)")
        if cfg.lr <= 0:
            raise ConfigError(source, f"{prefix}.lr", f"must be > 0, got {cfg.lr}")
        from hjseq.models.tokenizer import TokenizerError, parse_tokenizer_spec

        try:
            parse_tokenizer_spec(cfg.tokenizer, f"{prefix}.tokenizer")
        except TokenizerError as e:
            raise ConfigError(source, f"{prefix}.tokenizer", str(e).split(": ", 1)[1]) from None
        from hjseq.models.parallel import PARALLEL_MODES

        if cfg.parallel not in PARALLEL_MODES:
            raise ConfigError(source, f"{prefix}.parallel", f"unknown {cfg.parallel!r}; one of "
                              f"{', '.join(PARALLEL_MODES)} (ddp replicates the model, fsdp "
                              "shards parameters, gradients and optimizer state)")
        return cfg


@dataclass
class RunConfig:
    """A whole config file: ``[model]`` and optional ``[train]``."""

    model: ModelConfig
    train: TrainConfig
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": self.train.to_dict()}


def load_config(src: str | Path | Mapping[str, Any]) -> RunConfig:
    """Read a run config from a ``.toml``/``.json`` path or a dict with ``model`` (and
    optionally ``train``) tables. A dict without a ``model`` key is taken as the model table."""
    if isinstance(src, Mapping):
        data, source = dict(src), "<dict>"
        if "model" not in data:
            data = {"model": data}
    else:
        path = Path(src)
        source = str(path)
        if not path.is_file():
            raise ConfigError(source, "<file>", "no such config file")
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(path.read_text())
            elif path.suffix == ".json":
                data = json.loads(path.read_text())
            else:
                raise ConfigError(source, "<file>", "config must end in .toml or .json")
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(source, "<file>", f"cannot parse: {e}") from None
    for key in data:
        if key not in ("model", "train"):
            raise ConfigError(source, key, "unknown table; expected 'model' and 'train'")
    if not isinstance(data.get("model"), Mapping):
        raise ConfigError(source, "model", "missing [model] table")
    train = data.get("train", {})
    if not isinstance(train, Mapping):
        raise ConfigError(source, "train", f"expected a table, got {type(train).__name__}")
    model = _parse_model(data["model"], source, "model")
    train_cfg = TrainConfig.from_dict(train, source, "train")
    from hjseq.models.tokenizer import parse_tokenizer_spec

    kind, n_tokens = parse_tokenizer_spec(train_cfg.tokenizer)
    if kind != "bytes":  # the model's vocabulary follows a subword tokenizer
        if "vocab_size" not in data["model"]:
            model.vocab_size = n_tokens
        elif model.vocab_size < n_tokens:
            raise ConfigError(source, "model.vocab_size", f"{model.vocab_size} is smaller than "
                              f"the {n_tokens} tokens of train.tokenizer = "
                              f"{train_cfg.tokenizer!r}; leave vocab_size out (it follows the "
                              "tokenizer)")
    return RunConfig(model, train_cfg, source)


def _parse_model(data: Mapping[str, Any], source: str, prefix: str) -> ModelConfig:
    data = dict(data)
    known = {"d_model", "blocks", "repeat", "vocab_size", "norm_eps", "tie_embeddings",
             "residual_in_fp32", "config_version"}
    for key in data:
        if key not in known:
            raise ConfigError(source, f"{prefix}.{key}",
                              f"unknown option; known: {', '.join(sorted(known))}")
    version = _check_type(data.get("config_version", CONFIG_VERSION), (int,), source,
                          f"{prefix}.config_version")
    if not 1 <= version <= CONFIG_VERSION:
        raise ConfigError(source, f"{prefix}.config_version", f"must be 1..{CONFIG_VERSION} "
                          f"(this hjseq reads up to {CONFIG_VERSION}), got {version}")
    if "d_model" not in data:
        raise ConfigError(source, f"{prefix}.d_model", "missing (the model width)")
    d_model = _check_type(data["d_model"], (int,), source, f"{prefix}.d_model")
    if d_model < 1:
        raise ConfigError(source, f"{prefix}.d_model", f"must be >= 1, got {d_model}")
    vocab = _check_type(data.get("vocab_size", 256), (int,), source, f"{prefix}.vocab_size")
    if vocab < 2:
        raise ConfigError(source, f"{prefix}.vocab_size", f"must be >= 2, got {vocab}")
    repeat = _check_type(data.get("repeat", 1), (int,), source, f"{prefix}.repeat")
    if repeat < 1:
        raise ConfigError(source, f"{prefix}.repeat", f"must be >= 1, got {repeat}")
    raw_blocks = data.get("blocks")
    if not isinstance(raw_blocks, (list, tuple)) or not raw_blocks:
        raise ConfigError(source, f"{prefix}.blocks",
                          "expected a non-empty list of tables like {kind = \"mamba\"}")
    blocks: list[BlockSpec] = []
    for i, raw in enumerate(raw_blocks):
        spec, n = _parse_block(raw, source, f"{prefix}.blocks[{i}]", d_model)
        blocks.extend(BlockSpec(spec.kind, dict(spec.options)) for _ in range(n))
    blocks = [BlockSpec(b.kind, dict(b.options)) for _ in range(repeat) for b in blocks]
    return ModelConfig(
        d_model=d_model, blocks=blocks, vocab_size=vocab,
        norm_eps=_check_type(data.get("norm_eps", 1e-5), (float,), source, f"{prefix}.norm_eps"),
        tie_embeddings=_check_type(data.get("tie_embeddings", True), (bool,), source,
                                   f"{prefix}.tie_embeddings"),
        residual_in_fp32=_check_type(data.get("residual_in_fp32", False), (bool,), source,
                                     f"{prefix}.residual_in_fp32"),
    )


def _parse_block(raw: Any, source: str, key: str, d_model: int) -> tuple[BlockSpec, int]:
    if isinstance(raw, BlockSpec):
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise ConfigError(source, key, f"expected a table like {{kind = \"mamba\"}}, "
                                       f"got {type(raw).__name__}")
    raw = dict(raw)
    if "kind" not in raw:
        raise ConfigError(source, f"{key}.kind", f"missing; one of {', '.join(known_kinds())}, "
                          "or 'package.module:ClassName'")
    kind = raw.pop("kind")
    try:
        entry = get_kind(kind)
    except KindError as e:
        raise ConfigError(source, f"{key}.kind", str(e)) from None
    kind = canonical_kind(kind)
    n = _check_type(raw.pop("repeat", 1), (int,), source, f"{key}.repeat")
    if n < 1:
        raise ConfigError(source, f"{key}.repeat", f"must be >= 1, got {n}")
    schema = entry.options
    options: dict[str, Any] = {}
    for opt, value in raw.items():
        if opt not in schema:
            raise ConfigError(source, f"{key}.{opt}", f"unknown option for a {kind!r} block; "
                              f"known: {', '.join(sorted(schema))}, repeat")
        options[opt] = _check_type(value, schema[opt][0], source, f"{key}.{opt}")
    _check_block_values(kind, options, source, key, d_model)
    return BlockSpec(kind, options), n


def _check_block_values(kind: str, o: dict[str, Any], source: str, key: str, d_model: int) -> None:
    def positive(name: str) -> None:
        if name in o and not o[name] > 0:
            raise ConfigError(source, f"{key}.{name}", f"must be > 0, got {o[name]}")

    for name in ("d_state", "d_conv", "expand", "hidden_size", "n_heads", "n_units", "n_atoms",
                 "dt", "dt_min", "dt_max"):
        positive(name)
    if "eps" in o and o["eps"] is not None and o["eps"] < 0:
        raise ConfigError(source, f"{key}.eps", f"must be >= 0, got {o['eps']}")
    if "scheme" in o and o["scheme"] not in SCHEMES:
        raise ConfigError(source, f"{key}.scheme",
                          f"unknown scheme {o['scheme']!r}; one of {', '.join(sorted(SCHEMES))}")
    if kind == "mamba":
        if isinstance(o.get("dt_rank"), str) and o["dt_rank"] != "auto":
            raise ConfigError(source, f"{key}.dt_rank", "an int or 'auto'")
    if kind == "attention":
        heads = o.get("n_heads", 1)
        if d_model % heads:
            raise ConfigError(source, f"{key}.n_heads",
                              f"{heads} does not divide d_model = {d_model}")
        if o.get("eps") == 0:
            raise ConfigError(source, f"{key}.eps", "attention temperature must be > 0")
        from hjseq.nn.attention import POSITIONS

        if o.get("pos", POSITIONS[0]) not in POSITIONS:
            raise ConfigError(source, f"{key}.pos", f"unknown {o['pos']!r}; one of "
                              f"{', '.join(POSITIONS)} (rope: rotary positions; none: NoPE)")
        d_head = d_model // o.get("n_heads", max(1, d_model // 64))  # the builder's default
        if o.get("pos", POSITIONS[0]) == "rope" and d_head % 2:
            raise ConfigError(source, f"{key}.n_heads", f"rotary positions need an even head "
                              f"width; d_model/n_heads = {d_head} (or set pos = \"none\")")
    if kind == "lse" and o.get("n_atoms", 4) < 1:
        raise ConfigError(source, f"{key}.n_atoms", "must be >= 1")


def _check_type(value: Any, types: tuple[type, ...], source: str, key: str) -> Any:
    """Check ``value`` against ``types`` (an int is accepted where a float is expected; a bool
    is never accepted as a number). Returns the value, ints promoted to float where wanted."""
    if isinstance(value, bool):
        ok = bool in types
    elif isinstance(value, int) and float in types and int not in types:
        return float(value)
    else:
        ok = isinstance(value, tuple(t for t in types if t is not bool))
    if not ok:
        want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ConfigError(source, key, f"expected {want}, got {type(value).__name__} {value!r}")
    return value
