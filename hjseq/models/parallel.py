"""Data parallel training under ``torchrun``: DDP (the default) or sharded FSDP.

``[train] parallel`` names the mode (:data:`PARALLEL_MODES`):

- ``"ddp"``: every process holds the whole model and optimizer state; gradients are
  averaged (``DistributedDataParallel``). Checkpoints are one ``checkpoint.pt``.
- ``"fsdp"``: torch's FSDP2 (``fully_shard``) on every residual block and on the root
  (embedding, final norm, head): parameters, gradients and AdamW's moments are split
  across the processes, each parameter gathered only while its block runs. Model and
  optimizer state are saved with ``torch.distributed.checkpoint`` into
  ``checkpoint-dcp-<step>/`` beside ``checkpoint.pt`` (which holds the rest and names the
  directory), so a run saved on P processes resumes on any number, 1 included.

Gradients are averaged over processes in both modes, so with the same global batch a step
is the single-process step up to the order of floating-point sums.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

PARALLEL_MODES = ("ddp", "fsdp")
SHARDED_PREFIX = "checkpoint-dcp-"


def shard(model: nn.Module) -> nn.Module:
    """Apply FSDP2 in place: ``fully_shard`` on each of ``model.layers`` (one all-gather per
    block) and on the root. Call under an initialised process group, before the optimizer
    is built. Returns ``model``."""
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(model, "layers", []):
        fully_shard(layer)
    fully_shard(model)
    return model


def wrap(model: nn.Module, mode: str, enabled: bool, device: torch.device) -> nn.Module:
    """The module the training loop calls: DDP around ``model`` in ``"ddp"`` mode under
    several processes, else ``model`` itself (FSDP shards in place, see :func:`shard`)."""
    if not enabled or mode == "fsdp":
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(wrapped: nn.Module, sync: bool):
    """Context for one micro-batch's backward: gradients are reduced across processes only
    when ``sync`` (the last micro-batch of a step)."""
    if sync:
        if hasattr(wrapped, "set_requires_gradient_sync"):
            wrapped.set_requires_gradient_sync(True)
        return nullcontext()
    if hasattr(wrapped, "no_sync"):  # DDP
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2: accumulate unsharded grads
        wrapped.set_requires_gradient_sync(False)
    return nullcontext()


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` holds FSDP-sharded (DTensor) parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict as plain CPU tensors (a collective when sharded: every
    process must call it; rank 0 gets the full tensors, the others an empty dict)."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))


def unsharded_copy(model: nn.Module, build: Any) -> nn.Module | None:
    """A plain (unsharded) module equal to ``model`` on rank 0 (None on the other ranks):
    ``build()`` constructs it, then it loads :func:`full_state_dict`. Collective when
    sharded."""
    sd = full_state_dict(model)
    if not sd:
        return None
    plain = build()
    plain.load_state_dict(sd)
    return plain


def save_sharded(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                 is_main: bool) -> str:
    """Write model and optimizer state with ``torch.distributed.checkpoint`` into
    ``out/checkpoint-dcp-<step>/`` (every process writes its shards; collective when a
    process group exists). Returns the directory's name, for ``checkpoint.pt``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = f"{SHARDED_PREFIX}{step}"
    msd, osd = get_state_dict(model, optimizer)
    if is_main and (out / name).exists():  # left by a run stopped before checkpoint.pt named it
        shutil.rmtree(out / name)
    if dist.is_initialized():
        dist.barrier()
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(out / name))
    return name


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what :func:`save_sharded` wrote into ``model`` and ``optimizer``, resharded to
    this run's processes (any number; the tensors are the saved ones bit for bit)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not directory.is_dir():
        from hjseq.models.checkpoint import CheckpointError

        raise CheckpointError(f"{directory}: the sharded model/optimizer state named by "
                              "checkpoint.pt is missing; resume from a complete run directory")
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def remove_old_sharded(out: Path, keep: str) -> None:
    """Delete ``checkpoint-dcp-*`` directories other than ``keep`` (after ``checkpoint.pt``
    names ``keep``, so a crash never leaves a checkpoint without its state)."""
    for p in out.glob(f"{SHARDED_PREFIX}*"):
        if p.name != keep and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def quiet_single_process() -> Iterator[None]:
    """``torch.distributed.checkpoint`` warns when used without a process group (which is
    how a sharded run resumes on one process); silence that one warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


__all__ = ["PARALLEL_MODES", "shard", "wrap", "no_sync", "is_sharded",
           "full_state_dict", "unsharded_copy", "save_sharded", "load_sharded",
           "remove_old_sharded", "SHARDED_PREFIX"]
