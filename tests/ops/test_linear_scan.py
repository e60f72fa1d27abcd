"""linear_scan: every CPU backend vs the reference (outputs, final state, every gradient,
per dtype), varlen == separate sequences, hard mode (decay near 1, L = 16384), build
fallback, validation, torch.compile."""
from __future__ import annotations

import importlib
import pytest
import torch
from _utils import GRAD_RTOL, RTOL, assert_close, force_build_failure, grads_of

import hjseq.ops._build as build
from hjseq.ops import BackendUnavailable
from hjseq.ops._registry import available
from hjseq.ops.linear_scan import linear_scan

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# the CPU backends of this op that load here (the C++ one must build on this machine)
CPU_BACKENDS = [n for n in ("cpu",) if available("linear_scan", "cpu").get(n) is None]


def test_cpu_backend_builds():
    assert "cpu" in CPU_BACKENDS, available("linear_scan", "cpu")["cpu"]


def _inputs(B, D, L, dtype, with_h0, S=None):
    a = (0.5 + 0.5 * torch.rand(B, D, L, dtype=torch.float64)).to(dtype).requires_grad_()
    b = torch.randn(B, D, L, dtype=torch.float64).to(dtype).requires_grad_()
    h0 = (torch.randn(S or B, D, dtype=torch.float64).to(dtype).requires_grad_()
          if with_h0 else None)
    return a, b, h0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_ref(backend, dtype, with_h0):
    a, b, h0 = _inputs(2, 21, 133, dtype, with_h0)  # odd sizes: partial row blocks and tiles
    ins = [t for t in (a, b, h0) if t is not None]
    res = {}
    for name in ("ref", backend):
        h, hT = linear_scan(a, b, h0, return_final_state=True, backend=name)
        assert h.dtype == dtype and h.shape == b.shape and hT.shape == (2, 21)
        res[name] = [h, hT, *grads_of([h, hT], ins)]
    for what, r, o in zip(["h", "final", "da", "db", "dh0"], res["ref"], res[backend]):
        tol = RTOL[dtype] if what in ("h", "final") else GRAD_RTOL[dtype]
        assert o.dtype == r.dtype
        assert_close(r, o, tol, f"{backend} {dtype} {what}")


@pytest.mark.parametrize("backend", ["ref", *CPU_BACKENDS])
@pytest.mark.parametrize("with_h0", [False, True])
def test_varlen_equals_separate_sequences(backend, with_h0):
    # includes an empty and a length-1 sequence
    cu = torch.tensor([0, 5, 5, 6, 70, 100], dtype=torch.int32)
    S = cu.numel() - 1
    a, b, h0 = _inputs(1, 9, 100, torch.float64, with_h0, S=S)
    ins = [t for t in (a, b, h0) if t is not None]
    h, hT = linear_scan(a, b, h0, True, cu_seqlens=cu, backend=backend)
    packed = [h, hT, *grads_of([h, hT], ins)]
    hs, finals = [], []
    for s in range(S):
        lo, hi = int(cu[s]), int(cu[s + 1])
        hs_, f_ = linear_scan(a[..., lo:hi], b[..., lo:hi],
                              None if h0 is None else h0[s:s + 1], True, backend=backend)
        hs.append(hs_)
        finals.append(f_)
    h_sep, f_sep = torch.cat(hs, -1), torch.cat(finals, 0)
    separate = [h_sep, f_sep, *grads_of([h_sep, f_sep], ins)]
    for r, o in zip(separate, packed):
        assert_close(r, o, 1e-12, f"{backend} varlen")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_hard_mode_decay_near_one_long_sequence(backend):
    """a ∈ [1 − 1e-4, 1): the state integrates ~L inputs; float32 must stay accurate."""
    L = 16384
    a64 = 1 - 1e-4 * torch.rand(1, 8, L, dtype=torch.float64)
    b64 = torch.randn(1, 8, L, dtype=torch.float64)
    h_ref, f_ref = linear_scan(a64, b64, None, True, backend="ref")
    a32 = a64.float().requires_grad_()
    b32 = b64.float().requires_grad_()
    h, f = linear_scan(a32, b32, None, True, backend=backend)
    assert_close(h_ref, h, 1e-5, "hard mode h")
    assert_close(f_ref, f, 1e-5, "hard mode final")
    # gradients vs the float64 run of the same backend (checked against ref above)
    a64.requires_grad_()
    b64.requires_grad_()
    h64, f64 = linear_scan(a64, b64, None, True, backend=backend)
    for r, o, n in zip(grads_of([h64, f64], [a64, b64]), grads_of([h, f], [a32, b32]),
                       ["da", "db"]):
        assert_close(r, o, 1e-4, f"hard mode {n}")


def test_nan_fill_is_active():
    """The conftest makes hjseq's torch.empty return NaN (so stale reads would show)."""
    mod = importlib.import_module("hjseq.ops.linear_scan.cpu")

    assert torch.isnan(mod.torch.empty(4)).all()
    assert torch.isnan(mod.torch.empty_like(torch.zeros(3))).all()


def test_build_failure_falls_back_to_ref_with_warning(tmp_path, monkeypatch):
    force_build_failure(monkeypatch, tmp_path, "linear_scan")
    a, b, _ = _inputs(2, 3, 10, torch.float32, False)
    with pytest.warns(build.ExtensionBuildWarning, match="hjseq_linear_scan"):
        h = linear_scan(a, b)
    assert_close(linear_scan(a, b, backend="ref"), h, 0.0, "fallback")
    with pytest.raises(BackendUnavailable, match="linear_scan backend 'cpu' unavailable"):
        linear_scan(a, b, backend="cpu")


@pytest.mark.parametrize("call, match", [
    (lambda a, b: linear_scan(a[..., :-1], b), r"a must have shape \(B, D, L\)"),
    (lambda a, b: linear_scan(a.double(), b), "a has dtype torch.float64"),
    (lambda a, b: linear_scan(a, b[0]), r"b must have shape \(B, D, L\)"),
    (lambda a, b: linear_scan(a.int(), b), "a must be float32/float64"),
    (lambda a, b: linear_scan(a, b, torch.zeros(2, 4)), r"initial_state must have shape"),
    (lambda a, b: linear_scan(a, b, cu_seqlens=torch.tensor([0, 3, 6])), "batch size must be 1"),
    (lambda a, b: linear_scan(a[:1], b[:1], cu_seqlens=torch.tensor([0, 7, 6])),
     "cu_seqlens must rise from 0 to L=6"),
    (lambda a, b: linear_scan(a[:1], b[:1], cu_seqlens=torch.tensor([0., 6.])),
     "cu_seqlens must be an int32/int64"),
    (lambda a, b: linear_scan(a, b, backend="nope"), "backend='nope' is not one of"),
])
def test_validation_names_the_argument(call, match):
    a, b = torch.rand(2, 3, 6), torch.randn(2, 3, 6)
    with pytest.raises((ValueError, TypeError), match=match):
        call(a, b)


@pytest.mark.no_nan_fill
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    a, b, h0 = _inputs(2, 5, 17, torch.float32, True)
    f = torch.compile(lambda a, b, h0: linear_scan(a, b, h0, True, backend=backend),
                      fullgraph=True)
    h, hT = f(a, b, h0)
    g = grads_of([h, hT], [a, b, h0])
    h_r, hT_r = linear_scan(a, b, h0, True, backend="ref")
    g_r = grads_of([h_r, hT_r], [a, b, h0])
    for r, o in zip([h_r, hT_r, *g_r], [h, hT, *g]):
        assert_close(r, o, 1e-5, "compiled")
