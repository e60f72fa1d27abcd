"""The known GPU hazards of the Triton kernels, checked without a GPU:

- no reverse scans: Triton's GPU lowering of ``tl.associative_scan(..., reverse=True)``
  with a non-commutative combine has had wrong-result reports, and the interpreter (which
  does flip-scan-flip in numpy) cannot show them. Every backward must use forward scans
  over tiles loaded in reversed order; checked in the source and while the kernels run;
- the reversed-load co-state itself, at tile boundaries, against float64 truth;
- 64-bit offsets: a strided view whose elements lie more than 2³¹ elements apart (as in
  any tensor with B·D·L ≥ 2³¹) is read correctly. Its storage is allocated but only the
  touched pages become memory;
- the Triton import works without ``triton.knobs`` (releases before 3.4).
"""
from __future__ import annotations

import ast
import functools
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _gpu_testutil import DEVICE, HAS_CUDA, leaf, max_err, ref_backend, rel_rms, triton_backend
from hjseq.ops._triton_common import flip_time, int_dtype, tl, triton

OPS_DIR = Path(__file__).resolve().parents[2] / "hjseq" / "ops"
TRITON_SOURCES = sorted(OPS_DIR.glob("*/triton.py")) + [OPS_DIR / "_triton_common.py"]


def _reverse_scan_calls(path: Path) -> list[int]:
    """Lines of ``associative_scan`` calls with a ``reverse`` argument that is not False."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", "")) in ("associative_scan", "cumsum", "cumprod"):
            for kw in node.keywords:
                if kw.arg == "reverse" and not (isinstance(kw.value, ast.Constant)
                                                and kw.value.value is False):
                    lines.append(node.lineno)
            if len(node.args) >= 4:  # reverse passed positionally
                lines.append(node.lineno)
    return lines


def test_no_triton_source_uses_a_reverse_scan():
    assert len(TRITON_SOURCES) >= 4
    found = {str(p.relative_to(OPS_DIR)): _reverse_scan_calls(p) for p in TRITON_SOURCES}
    assert not any(found.values()), f"reverse scans: {found}"


@pytest.mark.skipif(HAS_CUDA, reason="hooks the CPU interpreter's scan")
def test_no_kernel_runs_a_reverse_scan(monkeypatch):
    """Run every scan backward under the interpreter and record each scan's direction."""
    interp = pytest.importorskip("triton.runtime.interpreter")
    seen: list[bool] = []
    orig = interp.ScanOps.__init__

    def spy(self, axis, combine_fn, reverse):
        seen.append(bool(reverse))
        orig(self, axis, combine_fn, reverse)

    monkeypatch.setattr(interp.ScanOps, "__init__", spy)
    g = torch.Generator().manual_seed(0)
    a = leaf(torch.rand(1, 2, 40, generator=g, dtype=torch.float64))
    b = leaf(torch.randn(1, 2, 40, generator=g, dtype=torch.float64))
    triton_backend("linear_scan")(a, b).sum().backward()
    u, dl = (leaf(torch.rand(1, 2, 40, generator=g, dtype=torch.float64)) for _ in range(2))
    A = leaf(-torch.rand(2, 2, generator=g, dtype=torch.float64))
    B, C = (torch.randn(1, 2, 40, generator=g, dtype=torch.float64) for _ in range(2))
    triton_backend("selective_scan")(u, dl, A, B, C, scheme="zoh").sum().backward()
    assert seen and not any(seen), f"{sum(seen)} of {len(seen)} scans ran reversed"


if triton is not None:

    @triton.jit
    def _flip_kernel(x_ptr, o_ptr, D: tl.constexpr, T: tl.constexpr, N: tl.constexpr,
                     LOG2_T: tl.constexpr, IDT: tl.constexpr, THREE_D: tl.constexpr):
        d, t, n = tl.arange(0, D), tl.arange(0, T), tl.arange(0, N)
        if THREE_D:
            off = d[:, None, None] * T * N + t[None, :, None] * N + n[None, None, :]
        else:
            off = d[:, None] * T + t[None, :]
        tl.store(o_ptr + off, flip_time(tl.load(x_ptr + off), 1, LOG2_T, IDT))


def test_flip_time_is_bit_exact():
    """The tile flip behind the reversed loads: exact for every bit pattern (NaN, ±inf,
    -0.0), fp32 and fp64, 2-D and 3-D tiles."""
    triton_backend("linear_scan")  # skips without triton
    for dtype, bits in ((torch.float32, torch.int32), (torch.float64, torch.int64)):
        for shape in ((2, 16, 4), (4, 8)):
            x = torch.randn(shape, dtype=dtype, device=DEVICE)
            x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
            o = torch.empty_like(x)
            _flip_kernel[(1,)](x, o, shape[0], shape[1], shape[2] if len(shape) == 3 else 1,
                          shape[1].bit_length() - 1, int_dtype(dtype), len(shape) == 3)
            assert torch.equal(o.view(bits), x.flip(1).view(bits)), (dtype, shape)


@pytest.mark.parametrize("L", [64, 65, 191])  # exactly one tile, one step more, 3 tiles
def test_reverse_costate_at_tile_boundaries(L):
    """db of linear_scan is the co-state g itself (g_t = dh_t + a_{t+1} g_{t+1}); with a
    spread over [0.05, 1.95] the combine's order matters at every step. float64, 1e-12."""
    g = torch.Generator().manual_seed(L)
    a = leaf(torch.rand(2, 3, L, generator=g, dtype=torch.float64).to(DEVICE) * 1.9 + 0.05)
    b = leaf(torch.randn(2, 3, L, generator=g, dtype=torch.float64).to(DEVICE))
    h0 = leaf(torch.randn(2, 3, generator=g, dtype=torch.float64).to(DEVICE))
    gy = torch.randn(2, 3, L, generator=g, dtype=torch.float64).to(DEVICE)
    gf = torch.randn(2, 3, generator=g, dtype=torch.float64).to(DEVICE)
    res = []
    for fn in (ref_backend("linear_scan"), triton_backend("linear_scan")):
        h, f = fn(a, b, h0, return_final_state=True)
        res.append(torch.autograd.grad((h * gy).sum() + (f * gf).sum(), [a, b, h0]))
    for name, r, t in zip(("da", "db", "dh0"), *res):
        assert max_err(t, r) < 1e-12 * max(1.0, r.abs().max().item()), (name, max_err(t, r))


# --- 64-bit offsets -----------------------------------------------------------------------

def _isolated(test):
    """Run the test in a child pytest: a 32-bit offset overflow reads or writes out of
    bounds and could kill the whole run instead of failing one test."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        if os.environ.get("HJSEQ_ISOLATED_CHILD"):
            return test(*args, **kwargs)
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                              f"{__file__}::{test.__name__}"], capture_output=True, text=True,
                             env={**os.environ, "HJSEQ_ISOLATED_CHILD": "1"}, timeout=900)
        assert res.returncode == 0, f"child rc {res.returncode}:\n{res.stdout[-3000:]}"
    return run


FAR = 2**30 + 8  # elements between batch rows (an int32 stride); row 2 starts past 2³¹


def _far_view(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A (B, ...) view whose batch rows lie FAR elements apart in one allocation (virtual
    memory: only the pages that are written here and read by the kernel get backed)."""
    inner = 1
    for s in shape[1:]:
        inner *= s
    storage = torch.empty(FAR * (shape[0] - 1) + inner, dtype=dtype, device=DEVICE)
    strides = [FAR] + [0] * (len(shape) - 1)
    acc = 1
    for i in range(len(shape) - 1, 0, -1):
        strides[i] = acc
        acc *= shape[i]
    view = storage.as_strided(shape, strides)
    g = torch.Generator().manual_seed(seed)
    view.copy_(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))
    return view


def _far_leaf(view: torch.Tensor) -> torch.Tensor:
    """A leaf that keeps the view's strides (``leaf`` clones, which would compact it)."""
    out = view.detach().requires_grad_(True)
    assert out.stride() == view.stride() and out.data_ptr() == view.data_ptr()
    return out


@pytest.mark.skipif(sys.maxsize < 2**40, reason="needs a 64-bit address space")
@_isolated
def test_offsets_past_int32_selective_scan_and_linear_scan():
    """u, delta, z, B, C of selective_scan and a, b of linear_scan as views with batch rows
    2³⁰+8 elements apart (row 2 at 2³¹+16, as in a (3, D, L) tensor with D·L = 2³⁰+8);
    outputs and gradients against float64 on contiguous copies."""
    bf = torch.bfloat16
    shape = (3, 4, 24)
    u, delta, z = (_far_view(shape, bf, s) for s in (1, 2, 3))
    B, C = _far_view((3, 3, 24), bf, 4), _far_view((3, 3, 24), bf, 5)
    gen = torch.Generator().manual_seed(6)
    A = (-torch.rand(4, 3, generator=gen) - 0.1).to(DEVICE)
    dout = torch.randn(shape, generator=gen).to(DEVICE, bf)
    ins = dict(u=u, delta=delta, A=A, B=B, C=C, z=z)
    got_in = {k: _far_leaf(v) if v.stride(0) == FAR else leaf(v) for k, v in ins.items()}
    y = triton_backend("selective_scan")(**got_in, delta_softplus=True)
    got = [y, *torch.autograd.grad((y.float() * dout.float()).sum(), list(got_in.values()))]
    ref_in = {k: leaf(v.detach().contiguous().double()) for k, v in ins.items()}
    y_r = ref_backend("selective_scan")(**ref_in, delta_softplus=True)
    ref = [y_r, *torch.autograd.grad((y_r * dout.double()).sum(), list(ref_in.values()))]
    for name, t, r in zip(["y", *ins], got, ref):
        assert rel_rms(t, r) < 2e-2, (name, rel_rms(t, r))

    a = _far_view(shape, bf, 7)
    a = (a.float().sigmoid()).to(bf)  # contiguous decay in (0, 1); b stays the far view
    b = _far_view(shape, bf, 8)
    a_l, b_l = leaf(a), _far_leaf(b)
    h = triton_backend("linear_scan")(a_l, b_l)
    got = [h, *torch.autograd.grad((h.float() * dout.float()).sum(), [a_l, b_l])]
    a_r, b_r = leaf(a.double()), leaf(b.detach().contiguous().double())
    h_r = ref_backend("linear_scan")(a_r, b_r)
    ref = [h_r, *torch.autograd.grad((h_r * dout.double()).sum(), [a_r, b_r])]
    for name, t, r in zip(["h", "a", "b"], got, ref):
        assert rel_rms(t, r) < 2e-2, (name, rel_rms(t, r))


@pytest.mark.skipif(sys.maxsize < 2**40, reason="needs a 64-bit address space")
@_isolated
def test_offsets_past_int32_causal_conv1d():
    x = _far_view((3, 4, 40), torch.bfloat16, 9)
    gen = torch.Generator().manual_seed(10)
    w = torch.randn(4, 4, generator=gen).to(DEVICE)
    dout = torch.randn(3, 4, 40, generator=gen).to(DEVICE)
    x_l, w_l = _far_leaf(x), leaf(w)
    y = triton_backend("causal_conv1d")(x_l, w_l, activation="silu")
    got = [y, *torch.autograd.grad((y.float() * dout).sum(), [x_l, w_l])]
    x_r, w_r = leaf(x.detach().contiguous().double()), leaf(w.double())
    y_r = ref_backend("causal_conv1d")(x_r, w_r, activation="silu")
    ref = [y_r, *torch.autograd.grad((y_r * dout.double()).sum(), [x_r, w_r])]
    for name, t, r in zip(["y", "x", "w"], got, ref):
        assert rel_rms(t, r) < 2e-2, (name, rel_rms(t, r))


# --- imports ------------------------------------------------------------------------------

def test_triton_backends_work_without_knobs(monkeypatch):
    """On triton < 3.4 (no ``triton.knobs``) the backends still load, reading
    TRITON_INTERPRET from the environment; a failed triton import names its reason."""
    pytest.importorskip("triton")
    import hjseq.ops._triton_common as common

    class _NoKnobs:  # `from triton import knobs` raises ImportError on this module
        def __getattr__(self, name):
            if name == "knobs":
                raise AttributeError(name)
            return getattr(real, name)

    real = sys.modules["triton"]
    monkeypatch.setitem(sys.modules, "triton", _NoKnobs())
    monkeypatch.setitem(sys.modules, "triton.knobs", None)  # `import triton.knobs` fails
    try:
        fresh = importlib.reload(common)
        assert fresh._knobs is None and fresh.triton is not None
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert fresh.interpreting() and fresh.unavailable_reason() is None
        if not HAS_CUDA:
            monkeypatch.setenv("TRITON_INTERPRET", "0")
            assert "TRITON_INTERPRET" in fresh.unavailable_reason()
    finally:
        monkeypatch.undo()
        importlib.reload(common)
    assert common._knobs is not None or not hasattr(real, "knobs")
