"""causal_conv1d: every CPU backend vs the reference (output, final state, dx, dweight,
dbias, dinitial_state, per dtype and activation), varlen == separate sequences, build
fallback, validation, torch.compile."""
from __future__ import annotations


import pytest
import torch
from _utils import GRAD_RTOL, RTOL, assert_close, force_build_failure, grads_of

import hjseq.ops._build as build
from hjseq.ops import BackendUnavailable
from hjseq.ops._registry import available
from hjseq.ops.causal_conv1d import causal_conv1d

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
CPU_BACKENDS = [n for n in ("cpu",) if available("causal_conv1d", "cpu").get(n) is None]


def test_cpu_backend_builds():
    assert "cpu" in CPU_BACKENDS, available("causal_conv1d", "cpu")["cpu"]


def _inputs(B, D, L, W, dtype, with_bias, with_h0, S=None):
    def mk(*shape):
        return torch.randn(*shape, dtype=torch.float64).to(dtype).requires_grad_()

    return (mk(B, D, L), mk(D, W), mk(D) if with_bias else None,
            mk(S or B, D, W - 1) if with_h0 else None)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias, with_h0", [(False, False), (True, True)])
def test_matches_ref(backend, dtype, activation, with_bias, with_h0):
    x, w, bias, h0 = _inputs(2, 11, 37, 4, dtype, with_bias, with_h0)
    ins = [t for t in (x, w, bias, h0) if t is not None]
    names = ["y", "final", "dx", "dweight"] + (["dbias", "dh0"] if with_bias else [])
    res = {}
    for name in ("ref", backend):
        y, fin = causal_conv1d(x, w, bias, activation, h0, True, backend=name)
        assert y.dtype == dtype and fin.shape == (2, 11, 3)
        res[name] = [y, fin, *grads_of([y, fin], ins)]
    for what, r, o in zip(names, res["ref"], res[backend]):
        tol = RTOL[dtype] if what in ("y", "final") else GRAD_RTOL[dtype]
        assert o.dtype == r.dtype, what
        assert_close(r, o, tol, f"{backend} {dtype} {activation} {what}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("W", [1, 2, 5])
def test_kernel_widths(backend, W):
    x, w, bias, h0 = _inputs(1, 4, 9, W, torch.float64, True, True)
    ins = [x, w, bias, h0]
    r = causal_conv1d(x, w, bias, "swish", h0, True, backend="ref")
    o = causal_conv1d(x, w, bias, "swish", h0, True, backend=backend)
    for a, b in zip([*r, *grads_of(list(r), ins)], [*o, *grads_of(list(o), ins)]):
        assert_close(a, b, 1e-12, f"W={W}")


@pytest.mark.parametrize("backend", ["ref", *CPU_BACKENDS])
def test_varlen_equals_separate_sequences(backend):
    # lengths 2 and 1 are shorter than the history W-1 = 3: the final state mixes history
    cu = torch.tensor([0, 2, 3, 40, 64], dtype=torch.int64)
    x, w, bias, h0 = _inputs(1, 6, 64, 4, torch.float64, True, True, S=4)
    ins = [x, w, bias, h0]
    y, fin = causal_conv1d(x, w, bias, "silu", h0, True, cu, backend=backend)
    packed = [y, fin, *grads_of([y, fin], ins)]
    ys, fins = [], []
    for s in range(4):
        lo, hi = int(cu[s]), int(cu[s + 1])
        y_, f_ = causal_conv1d(x[..., lo:hi], w, bias, "silu", h0[s:s + 1], True, backend=backend)
        ys.append(y_)
        fins.append(f_)
    y_sep, f_sep = torch.cat(ys, -1), torch.cat(fins, 0)
    for r, o in zip([y_sep, f_sep, *grads_of([y_sep, f_sep], ins)], packed):
        assert_close(r, o, 1e-12, f"{backend} varlen")


def test_build_failure_falls_back_to_ref_with_warning(tmp_path, monkeypatch):
    force_build_failure(monkeypatch, tmp_path, "causal_conv1d")
    x, w, bias, _ = _inputs(2, 3, 10, 4, torch.float32, True, False)
    with pytest.warns(build.ExtensionBuildWarning, match="hjseq_causal_conv1d"):
        y = causal_conv1d(x, w, bias, "silu")
    assert_close(causal_conv1d(x, w, bias, "silu", backend="ref"), y, 0.0, "fallback")
    with pytest.raises(BackendUnavailable, match="causal_conv1d backend 'cpu' unavailable"):
        causal_conv1d(x, w, bias, backend="cpu")


@pytest.mark.parametrize("call, match", [
    (lambda x, w: causal_conv1d(x[0], w), r"x must have shape \(B, D, L\)"),
    (lambda x, w: causal_conv1d(x, w[:2]), r"weight must have shape \(D, W\)"),
    (lambda x, w: causal_conv1d(x, w[:, :0]), "weight must have at least one tap"),
    (lambda x, w: causal_conv1d(x, w, torch.zeros(2)), r"bias must have shape \(D,\)"),
    (lambda x, w: causal_conv1d(x, w, activation="relu"), "activation must be None, 'silu'"),
    (lambda x, w: causal_conv1d(x, w, initial_state=torch.zeros(2, 3, 4)),
     r"initial_state must have shape \(B, D, W-1\)"),
    (lambda x, w: causal_conv1d(x[:1], w, cu_seqlens=torch.tensor([0, 9])),
     "cu_seqlens must rise from 0 to L=6"),
    (lambda x, w: causal_conv1d(x.long(), w), "x must be float32/float64"),
])
def test_validation_names_the_argument(call, match):
    x, w = torch.randn(2, 3, 6), torch.randn(3, 4)
    with pytest.raises((ValueError, TypeError), match=match):
        call(x, w)


@pytest.mark.no_nan_fill
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    x, w, bias, h0 = _inputs(2, 5, 17, 4, torch.float32, True, True)
    ins = [x, w, bias, h0]
    f = torch.compile(lambda x, w, b, h0: causal_conv1d(x, w, b, "silu", h0, True,
                                                        backend=backend), fullgraph=True)
    out = f(x, w, bias, h0)
    ref = causal_conv1d(x, w, bias, "silu", h0, True, backend="ref")
    for r, o in zip([*ref, *grads_of(list(ref), ins)], [*out, *grads_of(list(out), ins)]):
        assert_close(r, o, 1e-5, "compiled")
