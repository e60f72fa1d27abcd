"""Shared helpers for the op tests (import with ``from _utils import assert_close, ...``;
pytest puts tests/ops on sys.path).

``assert_close(ref, out, ratio, name)`` is flash-linear-attention's relative-RMS check:
``rms(ref − out) / rms(ref) ≤ ratio`` (with a small absolute floor so an all-zero reference
does not divide by zero), which is robust to a few large elements in low precision where
an elementwise ``allclose`` is either too loose or flaky. NaN/Inf anywhere fails.
"""
from __future__ import annotations

import torch
from torch import Tensor

# relative-RMS tolerance per dtype for kernel-vs-reference comparisons
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# gradients go through more rounding (reductions, BPTT); a looser table
GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2,
             torch.float16: 5e-3}


def rel_rms_error(ref: Tensor, out: Tensor) -> float:
    """``rms(ref − out) / max(rms(ref), 1e-30)``, computed in float64."""
    ref64, out64 = ref.detach().double(), out.detach().double()
    err = (ref64 - out64).pow(2).mean().sqrt().item()
    base = ref64.pow(2).mean().sqrt().item()
    return err / max(base, 1e-30)


def assert_close(ref: Tensor, out: Tensor, ratio: float, name: str = "") -> float:
    """Fail unless ``out`` matches ``ref`` in shape and to relative RMS error ≤ ``ratio``;
    returns the error so callers can report it."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != ref {tuple(ref.shape)}"
    if ref.numel() == 0:  # e.g. the (B, D, 0) history of a width-1 conv
        return 0.0
    assert torch.isfinite(out).all(), f"{name}: output has NaN/Inf"
    assert torch.isfinite(ref).all(), f"{name}: reference has NaN/Inf"
    err = rel_rms_error(ref, out)
    assert err <= ratio, (f"{name}: relative RMS error {err:.3e} > {ratio:.1e} "
                          f"(max abs diff {(ref.double() - out.double()).abs().max().item():.3e})")
    return err


def grads_of(outputs: list[Tensor | None], inputs: list[Tensor], seed: int = 1234) -> list[Tensor]:
    """Gradients of ``Σ_k ⟨outputs_k, G_k⟩`` w.r.t. ``inputs`` for fixed random cotangents G_k
    (the same for every backend: drawn from ``seed``, summed in float64)."""
    gen = torch.Generator().manual_seed(seed)
    loss = torch.zeros((), dtype=torch.float64)
    for o in outputs:
        if o is not None:
            g = torch.randn(o.shape, generator=gen, dtype=torch.float64)
            loss = loss + (o.double() * g).sum()
    return list(torch.autograd.grad(loss, inputs))


def force_build_failure(monkeypatch, tmp_path, op: str) -> None:
    """Make the next build of ``op``'s C++ extension really fail (its source replaced by an
    ``#error``) and forget any cached build or backend, so the fallback path runs for real."""
    import importlib

    from hjseq.ops import _build as build
    from hjseq.ops._registry import Backend, backends

    importlib.import_module(f"hjseq.ops.{op}.cpu")
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / f"{op}.cpp").write_text("#error forced build failure for a test\n")
    monkeypatch.setattr(build, "csrc_dir", lambda: tmp_path)
    monkeypatch.setattr(build, "_CACHE", {})
    monkeypatch.setattr(build, "_FAILED", {})
    monkeypatch.setenv("HJSEQ_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("HJSEQ_NO_BUILD", raising=False)
    monkeypatch.setitem(backends(op), "cpu", Backend(op, "cpu", f"hjseq.ops.{op}.cpu", ("cpu",)))
