"""Shared machinery of the hand-written CUDA backends (``hjseq/ops/<op>/cuda.py``): why
they cannot run here, and building their ``csrc/cuda/`` sources through
:func:`hjseq.ops._build.load_extension` (only where torch has CUDA, a device is visible and
nvcc is found)."""
from __future__ import annotations

import os
import shutil
from types import ModuleType

import torch

# nvcc flags of the extension builds (also used by the standalone compile tests)
CUDA_FLAGS = ["-O3", "-std=c++17", "-lineinfo"]


def nvcc_path() -> str | None:
    """The nvcc that torch's extension builder would use, or None."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot be built and run in this process, or None."""
    if torch.version.cuda is None:
        return ("this torch build has no CUDA (a CPU-only wheel); install a CUDA build of "
                "torch to use the CUDA kernels")
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    if nvcc_path() is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH) to build csrc/cuda/"
    return None


def build(name: str, sources: list[str]) -> ModuleType:
    """Compile (once, cached) the extension ``hjseq_<name>`` from ``csrc/`` sources."""
    from ._build import load_extension
    return load_extension(name, sources, extra_cuda_cflags=CUDA_FLAGS)
