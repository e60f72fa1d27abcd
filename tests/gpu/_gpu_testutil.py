"""Shared helpers of tests/gpu: backend loading, input builders, error measures."""
from __future__ import annotations

import importlib

import pytest
import torch

from hjseq.ops._registry import BackendUnavailable

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def triton_backend(op: str):
    """The Triton implementation of ``op``; skips only if triton itself is not installed."""
    mod = importlib.import_module(f"hjseq.ops.{op}.triton")
    try:
        return mod.load()
    except BackendUnavailable as e:
        if "not importable" in str(e):
            pytest.skip(f"triton is not installed: {e}")
        raise


def ref_backend(op: str):
    return importlib.import_module(f"hjseq.ops.{op}.ref").load()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (root mean square), the relative error used for low precisions."""
    if a.numel() == 0:
        return 0.0
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def run_with_grads(fn, inputs: dict, grad_names: list[str], seed: int = 1):
    """Call ``fn(**inputs)`` (which returns (y, final)), back-propagate fixed random
    cotangents through both outputs, return ``[y, final, *grads]``."""
    y, final = fn(**inputs)
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y)
    gf = torch.randn(final.shape, generator=gen, dtype=torch.float64).to(final)
    loss = (y.double() * gy.double()).sum() + (final.double() * gf.double()).sum()
    tensors = [inputs[n] for n in grad_names]
    grads = torch.autograd.grad(loss, tensors)
    return [y, final, *grads]


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)
