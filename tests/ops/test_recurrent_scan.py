"""recurrent_scan: every backend vs the reference (outputs, final states, every gradient)
for rnn_tanh / gru / lstm at Δ ∈ {1, 0.3}, with and without biases and noise; vs
torch.nn.RNN/GRU/LSTM at Δ = 1; build fallback; validation; torch.compile."""
from __future__ import annotations


import pytest
import torch
from _utils import GRAD_RTOL, RTOL, assert_close, force_build_failure, grads_of

import hjseq.ops._build as build
from hjseq.ops import BackendUnavailable
from hjseq.ops._registry import available, resolve
from hjseq.ops.recurrent_scan import CELLS, recurrent_scan

TORCH_MODULES = {"rnn_tanh": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
CPU_BACKENDS = [n for n in ("cpu",) if available("recurrent_scan", "cpu").get(n) is None]


def test_cpu_backend_builds():
    assert "cpu" in CPU_BACKENDS, available("recurrent_scan", "cpu")["cpu"]


def _inputs(cell, B=3, L=7, I=5, H=6, dtype=torch.float64, bias=True, noise=False):
    G = CELLS[cell]

    def mk(*shape, scale=1.0):
        return (scale * torch.randn(*shape, dtype=torch.float64)).to(dtype).requires_grad_()

    return dict(
        x=mk(B, L, I), weight_ih=mk(G * H, I, scale=0.5), weight_hh=mk(G * H, H, scale=0.5),
        bias_ih=mk(G * H) if bias else None, bias_hh=mk(G * H) if bias else None,
        h0=mk(B, H), c0=mk(B, H) if cell == "lstm" else None,
        noise=mk(B, L, H, scale=0.1) if noise else None)


def _forward_and_grads(cell, kw, dt, backend):
    ins = [v for v in kw.values() if v is not None]
    out, hT, cT = recurrent_scan(cell, **kw, dt=dt, backend=backend)
    return [t for t in (out, hT, cT) if t is not None], grads_of([out, hT, cT], ins)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dt", [1.0, 0.3])
@pytest.mark.parametrize("bias, noise", [(True, False), (False, True)])
@pytest.mark.parametrize("backend", ["native", *CPU_BACKENDS])
def test_matches_ref_float64(cell, dt, bias, noise, backend):
    kw = _inputs(cell, bias=bias, noise=noise)
    if backend == "native" and (dt != 1.0 or noise):
        with pytest.raises(BackendUnavailable, match="does not support this call"):
            recurrent_scan(cell, **kw, dt=dt, backend="native")
        return
    ref_out, ref_g = _forward_and_grads(cell, kw, dt, "ref")
    out, g = _forward_and_grads(cell, kw, dt, backend)
    for i, (r, o) in enumerate(zip(ref_out + ref_g, out + g)):
        assert_close(r, o, 1e-10, f"{backend} {cell} dt={dt} #{i}")


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_ref_low_precision(cell, dtype, backend):
    kw = _inputs(cell, dtype=dtype, noise=True)
    ref_out, ref_g = _forward_and_grads(cell, kw, 0.3, "ref")
    out, g = _forward_and_grads(cell, kw, 0.3, backend)
    for r, o in zip(ref_out, out):
        assert o.dtype == dtype
        assert_close(r, o, RTOL[dtype], f"{backend} {cell} {dtype} out")
    for r, o in zip(ref_g, g):
        assert o.dtype == r.dtype == dtype
        assert_close(r, o, GRAD_RTOL[dtype], f"{backend} {cell} {dtype} grad")


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["auto", "ref", "native", *CPU_BACKENDS])
def test_dt_one_is_torch_nn(cell, backend):
    m = TORCH_MODULES[cell](5, 6, batch_first=True).double()
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 3, 6, dtype=torch.float64)
    c0 = torch.randn(1, 3, 6, dtype=torch.float64) if cell == "lstm" else None
    params = list(m.parameters())
    y, hx = m(x, (h0, c0) if cell == "lstm" else h0)
    h_t, c_t = hx if cell == "lstm" else (hx, None)
    g_ref = grads_of([y, h_t, c_t], [x, *params])
    out, hT, cT = recurrent_scan(cell, x, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0,
                                 m.bias_hh_l0, h0[0], None if c0 is None else c0[0],
                                 backend=backend)
    g = grads_of([out, hT[None], None if cT is None else cT[None]], [x, *params])
    assert_close(y, out, 1e-12, "out")
    assert_close(h_t[0], hT, 1e-12, "h_T")
    if cell == "lstm":
        assert_close(c_t[0], cT, 1e-12, "c_T")
    else:
        assert cT is None
    for r, o in zip(g_ref, g):
        assert_close(r, o, 1e-10, "grad")


def test_auto_order_on_cpu():
    kw = dict(cell="gru", x=torch.randn(1, 2, 3), weight_ih=torch.randn(6, 3),
              weight_hh=torch.randn(6, 2), bias_ih=None, bias_hh=None, h0=None)
    assert resolve("recurrent_scan", "auto", "cpu", **kw, dt=1.0, noise=None)[0] == "native"
    expected = "cpu" if CPU_BACKENDS else "ref"
    assert resolve("recurrent_scan", "auto", "cpu", **kw, dt=0.5, noise=None)[0] == expected


def test_zero_default_states_and_noise_placement():
    """h0/c0 None mean zeros; for lstm the noise enters c before h = o ⊙ tanh(c)."""
    kw = _inputs("lstm", noise=True)
    zeros = torch.zeros_like(kw["h0"])
    a = recurrent_scan("lstm", **{**kw, "h0": None, "c0": None}, dt=0.3, backend="cpu")
    b = recurrent_scan("lstm", **{**kw, "h0": zeros, "c0": zeros}, dt=0.3, backend="ref")
    for r, o in zip(b, a):
        assert_close(r, o, 1e-12, "zero states")
    # one step by hand: c1 = c0 + dt(-(1-f)c0 + i g) + noise_0, h1 = o tanh(c1)
    x, wi, wh = kw["x"][:, :1], kw["weight_ih"], kw["weight_hh"]
    gates = x[:, 0] @ wi.T + kw["bias_ih"] + kw["h0"] @ wh.T + kw["bias_hh"]
    i, f, g, o = gates.chunk(4, -1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c1 = kw["c0"] + 0.3 * (-(1 - f) * kw["c0"] + i * g) + kw["noise"][:, 0]
    out, hT, cT = recurrent_scan("lstm", x, wi, wh, kw["bias_ih"], kw["bias_hh"], kw["h0"],
                                 kw["c0"], 0.3, kw["noise"][:, :1], backend="cpu")
    assert_close(c1, cT, 1e-12, "c1")
    assert_close(o * c1.tanh(), hT, 1e-12, "h1")


def test_build_failure_falls_back_to_ref_with_warning(tmp_path, monkeypatch):
    force_build_failure(monkeypatch, tmp_path, "recurrent_scan")
    kw = _inputs("gru", dtype=torch.float32)
    with pytest.warns(build.ExtensionBuildWarning, match="hjseq_recurrent_scan"):
        out = recurrent_scan("gru", **kw, dt=0.5)  # native declines dt != 1: cpu, then ref
    ref = recurrent_scan("gru", **kw, dt=0.5, backend="ref")
    assert_close(ref[0], out[0], 0.0, "fallback")
    with pytest.raises(BackendUnavailable, match="recurrent_scan backend 'cpu' unavailable"):
        recurrent_scan("gru", **kw, dt=0.5, backend="cpu")


def _bad(**over):
    kw = _inputs("lstm", B=2, L=3, I=4, H=5, dtype=torch.float32)
    kw.update(over)
    cell = kw.pop("cell", "lstm")
    dt = kw.pop("dt", 1.0)
    return lambda: recurrent_scan(cell, **kw, dt=dt)


@pytest.mark.parametrize("call, match", [
    (_bad(cell="relu"), "cell must be one of"),
    (_bad(x=torch.randn(2, 3)), r"x must have shape \(B, L, I\)"),
    (_bad(x=torch.randn(2, 0, 4)), "at least one time step"),
    (_bad(weight_ih=torch.randn(20, 3)), r"weight_ih must have shape \(G\*H, I\) with G=4"),
    (_bad(weight_hh=torch.randn(15, 5)), r"weight_hh must have shape \(G\*H, H\) with G=4"),
    (_bad(bias_hh=torch.randn(7)), r"bias_hh must have shape"),
    (_bad(h0=torch.randn(3, 5)), r"h0 must have shape \(B, H\)"),
    (_bad(c0=torch.randn(2, 5, dtype=torch.float64)), "c0 has dtype torch.float64"),
    (_bad(cell="gru", weight_ih=torch.randn(15, 4), weight_hh=torch.randn(15, 5),
          bias_ih=None, bias_hh=None), "c0 is the LSTM cell state"),
    (_bad(noise=torch.randn(2, 4, 5)), r"noise must have shape \(B, L, H\)"),
    (_bad(dt=float("nan")), "dt must be a finite positive number"),
    (_bad(dt=-0.1), "dt must be a finite positive number"),
])
def test_validation_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.no_nan_fill
@pytest.mark.parametrize("dt", [1.0, 0.4])
def test_torch_compile_fullgraph(dt):
    kw = _inputs("lstm", dtype=torch.float32, noise=dt != 1.0)
    ins = [v for v in kw.values() if v is not None]
    names = list(kw)
    f = torch.compile(lambda *a: recurrent_scan("lstm", **dict(zip(names, a)), dt=dt,
                                                backend="cpu"), fullgraph=True)
    out = f(*kw.values())
    ref = recurrent_scan("lstm", **kw, dt=dt, backend="ref")
    for r, o in zip([*ref, *grads_of(list(ref), ins)], [*out, *grads_of(list(out), ins)]):
        assert_close(r, o, 1e-5, "compiled")


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_forward_without_grad_equals_forward_with_grad(cell):
    """Without autograd the cpu kernel keeps one slot of per-step gates instead of L: the
    outputs and final states must be identical to the saving path's."""
    if available("recurrent_scan")["cpu"] is not None:
        pytest.skip("cpu backend not built here")
    kw = _inputs(cell, B=5, L=9, dtype=torch.float32)
    with_grad = recurrent_scan(cell, **kw, dt=0.5, backend="cpu")
    with torch.no_grad():
        without = recurrent_scan(cell, **kw, dt=0.5, backend="cpu")
    for a, b in zip(with_grad, without):
        if a is not None:
            assert torch.equal(a.detach(), b)
