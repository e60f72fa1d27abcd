"""Atomic checkpoint files: write to a temporary file in the same directory, flush, fsync,
then ``os.replace`` it over the target and fsync the directory. A writer killed at any point
leaves either the previous file or the complete new one, never a torn file.

A training checkpoint (``checkpoint.pt``) is one file holding everything needed to continue
exactly: model and optimizer state, LR scheduler, RNG states (python, numpy, torch), the
step (which fixes the data position, see :mod:`hjseq.models.data`), and both configs.
"""
from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from hjseq.cli import UserError

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_SUFFIXES = (".toml", ".json")


class CheckpointError(UserError):
    """A checkpoint or saved model that is missing, truncated, corrupt, not a checkpoint, or
    whose weights do not fit its config. The message names the file and what to do."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path`` and atomically move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch RNG states (CUDA too when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` ``state`` (a dict) to ``path``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getbuffer())


TRAINING_KEYS = ("model", "config", "step")  # what every `hjseq train` checkpoint holds


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    require: tuple[str, ...] = TRAINING_KEYS) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`. ``path`` may be the file or the
    training output directory holding ``checkpoint.pt``. Raises :class:`CheckpointError`
    (naming the file) when it is missing, a config file, truncated, corrupt, or lacks
    a key in ``require``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if path.suffix in CONFIG_SUFFIXES and path.is_file():
        raise CheckpointError(
            f"{path} is a config file, not a checkpoint; resume a run with "
            f"`hjseq train --resume RUN_DIR` (the run's --out directory, e.g. runs/{path.stem})")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass the --out directory of a "
                              f"`hjseq train` run or the {CHECKPOINT_NAME} file itself")
    try:
        # our own file: it holds RNG states (numpy arrays), so the full unpickler is needed
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, not a pickle, wrong format: all say "unreadable"
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:160]}); it "
            "is truncated, corrupt or not written by `hjseq train`. Use another checkpoint, "
            "or start the run again without --resume") from e
    missing = [k for k in require if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise CheckpointError(f"{path} is not an `hjseq train` checkpoint (no {', '.join(missing)}); "
                              "pass the checkpoint.pt that `hjseq train` wrote")
    return ck


def check_weights(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                  source: str | Path, ignore_missing: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointError` unless ``found`` has exactly the keys and shapes of
    ``expected`` (a model's ``state_dict()``), listing the keys that differ. ``source``: the
    weights file, named in the message."""
    missing = [k for k in expected if k not in found and k not in ignore_missing]
    extra = [k for k in found if k not in expected]
    shapes = [f"{k}: config {tuple(expected[k].shape)}, file {tuple(found[k].shape)}"
              for k in expected if k in found and expected[k].shape != found[k].shape]
    if not (missing or extra or shapes):
        return

    def some(keys: list[str]) -> str:
        return "; ".join(keys[:6]) + (f"; ... ({len(keys) - 6} more)" if len(keys) > 6 else "")

    parts = ([f"shape mismatch: {some(shapes)}"] if shapes else []) + \
            ([f"missing: {some(missing)}"] if missing else []) + \
            ([f"unexpected: {some(extra)}"] if extra else [])
    raise CheckpointError(f"{source}: the weights do not fit the model its config describes "
                          f"({' | '.join(parts)}); the config and the weights come from "
                          "different models: save them together again")


def load_pretrained(directory: str | Path, map_location: str = "cpu") -> Any:
    """:meth:`HJLM.from_pretrained` with errors that name the file: a missing, truncated or
    corrupt ``config.json``/``model.safetensors`` or weights that do not fit the config
    raise :class:`CheckpointError`."""
    import json

    from hjseq.models.config import ModelConfig
    from hjseq.models.lm import HJLM

    directory = Path(directory)
    cfg_path, w_path = directory / "config.json", directory / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{p} not found: expected a directory written by "
                                  "HJLM.save_pretrained (config.json + model.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e}); it is truncated or "
                              "corrupt: save the model again") from None
    if not isinstance(cfg, dict) or cfg.pop("model_type", None) != "hjseq":
        raise CheckpointError(f"{cfg_path} is not an hjseq config (model_type != 'hjseq'); "
                              "for a Hugging Face Mamba checkpoint use HJLM.from_hf_mamba")
    model = HJLM(ModelConfig.from_saved(cfg, str(cfg_path), "config"))
    try:
        from safetensors.torch import load_file

        sd = load_file(str(w_path), device=map_location)
    except Exception as e:  # safetensors raises its own error type for torn headers
        raise CheckpointError(
            f"{w_path} cannot be read ({type(e).__name__}: {str(e)[:160]}); the file is "
            "truncated or corrupt: save the model again, or load the run's checkpoint.pt") from e
    tied = ("lm_head.weight",) if model.config.tie_embeddings else ()
    check_weights(model.state_dict(), sd, w_path, ignore_missing=tied)
    if tied and "embedding.weight" in sd:
        sd["lm_head.weight"] = sd["embedding.weight"]
    model.load_state_dict(sd)
    return model
