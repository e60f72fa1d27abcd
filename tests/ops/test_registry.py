"""The backend registry: explicit names never fall back; "auto" follows the order, and on
measured devices picks the fastest backend by timing the call itself."""
import sys
import time
import types

import pytest
import torch

from hjseq.ops import _registry as reg


def _fake_backend(module_name: str, delay_s: float, calls: list, declines: str | None = None):
    mod = types.ModuleType(module_name)

    def impl(x):
        calls.append(module_name)
        time.sleep(delay_s)
        return x + 1

    mod.load = lambda: impl
    mod.supports = lambda **kw: declines
    sys.modules[module_name] = mod


@pytest.fixture
def demo_op(monkeypatch):
    """An op 'demo' with a slow backend first in the order and a fast one second."""
    calls: list = []
    _fake_backend("hjseq_test_demo_ref", 0.0, calls)
    _fake_backend("hjseq_test_demo_slow", 0.02, calls)
    _fake_backend("hjseq_test_demo_fast", 0.0, calls)
    _fake_backend("hjseq_test_demo_picky", 0.0, calls, declines="only even lengths")
    monkeypatch.setitem(reg._BACKENDS, "demo", {})
    reg.register("demo", "ref", "hjseq_test_demo_ref", ("cpu",))
    reg.register("demo", "cpu", "hjseq_test_demo_slow", ("cpu",))
    reg.register("demo", "triton", "hjseq_test_demo_fast", ("cpu",))
    reg.register("demo", "native", "hjseq_test_demo_picky", ("cpu",))
    reg.set_auto_order("demo", "cpu", ("native", "cpu", "triton", "ref"))
    yield calls
    reg._OP_AUTO_ORDER.pop("demo", None)
    reg.set_measured_auto({"cuda"})
    for m in ("ref", "slow", "fast", "picky"):  # the fake modules, by their names
        sys.modules.pop(f"hjseq_test_demo_{m}", None)


def test_static_auto_order_skips_declining_backend(demo_op):
    reg.set_measured_auto({"cuda"})  # cpu not measured: the order decides
    name, _ = reg.resolve("demo", "auto", "cpu", x=torch.zeros(3))
    assert name == "cpu"


def test_measured_auto_picks_fastest_and_caches(demo_op):
    reg.set_measured_auto({"cpu"})
    x = torch.zeros(5)
    name, fn = reg.resolve("demo", "auto", "cpu", x=x)
    assert name == "triton"
    assert torch.equal(fn(x=x), x + 1)
    assert "hjseq_test_demo_slow" in demo_op and "hjseq_test_demo_ref" not in demo_op
    key = next(k for k in reg.measured_choices() if k[0] == "demo")
    assert reg.measured_choices()[key] == "triton"
    # a shape in the same power-of-two bucket reuses the choice without timing again
    demo_op.clear()
    assert reg.resolve("demo", "auto", "cpu", x=torch.zeros(7))[0] == "triton"
    assert demo_op == []


def test_measured_auto_is_skipped_for_meta_tensors(demo_op):
    reg.set_measured_auto({"cpu"})
    name, _ = reg.resolve("demo", "auto", "cpu", x=torch.zeros(3, device="meta"))
    assert name == "cpu" and demo_op == []


def test_explicit_backend_never_falls_back(demo_op):
    with pytest.raises(reg.BackendUnavailable, match="does not support this call: only even"):
        reg.resolve("demo", "native", "cpu", x=torch.zeros(3))
    with pytest.raises(ValueError, match="backend='nope' is not one of"):
        reg.resolve("demo", "nope", "cpu", x=torch.zeros(3))


def test_measured_auto_on_a_real_op_returns_ref_equal_results(monkeypatch):
    """linear_scan with two fused CPU candidates (C++ and Triton under its interpreter): the
    measured choice is one of them, cached, and the result equals the reference."""
    from hjseq.ops import linear_scan

    monkeypatch.setitem(reg._OP_AUTO_ORDER, "linear_scan", {"cpu": ("cpu", "triton", "ref")})
    available = [n for n in ("cpu", "triton") if reg.available("linear_scan")[n] is None]
    if len(available) < 2:
        pytest.skip(f"needs both cpu and triton backends here; have {available}")
    reg.set_measured_auto({"cpu"})
    try:
        a, b = torch.rand(2, 8, 64), torch.randn(2, 8, 64)
        out = linear_scan(a, b)
        torch.testing.assert_close(out, linear_scan(a, b, backend="ref"), rtol=1e-5, atol=1e-5)
        choices = [v for k, v in reg.measured_choices().items() if k[0] == "linear_scan"]
        assert choices and choices[0] in ("cpu", "triton")
    finally:
        reg.set_measured_auto({"cuda"})
