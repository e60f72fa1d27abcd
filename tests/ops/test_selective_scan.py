"""The fused CPU selective scan against its executable definition (ref.py).

Outputs, final state and every gradient, per input dtype, with mamba-ssm-style tolerance
tables; both schemes; optional D / z / delta_bias / softplus / groups / initial state;
stability at L = 16384 with decay near 1; packed sequences; the build-fallback path;
argument validation; torch.compile(fullgraph=True).
"""
from __future__ import annotations

import pytest
import torch

from hjseq.ops import BackendUnavailable, selective_scan
from hjseq.ops import _build
from hjseq.ops._registry import backends
from hjseq.ops.selective_scan import cpu as ss_cpu
from hjseq.ops.selective_scan.ref import selective_scan_ref


def _cpu_available() -> bool:
    try:
        backends("selective_scan")["cpu"].load()
        return True
    except BackendUnavailable:
        return False


# The kernel is the point of this file: if it cannot be built here, every comparison is
# skipped with the reason (the fallback test below still runs).
needs_cpu = pytest.mark.skipif(not _cpu_available(), reason="CPU extension could not be built")

# (rtol, atol) for outputs and for gradients, in the spirit of mamba-ssm's test tables.
# Low-precision inputs are compared on the same rounded inputs; the remaining difference
# is fp32 summation order plus the final rounding of outputs/gradients to the input dtype.
TOL = {
    torch.float64: ((1e-10, 1e-10), (1e-9, 1e-9)),
    torch.float32: ((6e-4, 2e-3), (1e-3, 3e-3)),
    torch.float16: ((3e-3, 5e-3), (5e-3, 1e-2)),
    torch.bfloat16: ((3e-2, 5e-2), (5e-2, 1e-1)),
}


def make_inputs(batch=2, dim=20, L=150, N=5, groups=2, dtype=torch.float32, *, with_D=True,
                with_z=True, with_bias=True, with_init=True, seed=0):
    """Random problem with u/delta/z in ``dtype`` and fp32 parameters (as in Mamba)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    args = dict(
        u=rnd(batch, dim, L).to(dtype),
        delta=(0.5 * rnd(batch, dim, L) - 0.5).to(dtype),
        A=-(0.2 + torch.rand(dim, N, generator=g)).to(pdtype),
        B=(rnd(batch, groups, N, L) if groups else rnd(batch, N, L)).to(dtype),
        C=(rnd(batch, groups, N, L) if groups else rnd(batch, N, L)).to(dtype),
        D=rnd(dim).to(pdtype) if with_D else None,
        z=rnd(batch, dim, L).to(dtype) if with_z else None,
        delta_bias=(0.3 * rnd(dim)).to(pdtype) if with_bias else None,
        initial_state=rnd(batch, dim, N).to(pdtype) if with_init else None,
    )
    return args


def _leaves(args):
    return {k: (v.detach().clone().requires_grad_(True) if v is not None else None)
            for k, v in args.items()}


def run_with_grads(fn, args, **flags):
    """Run ``fn``; backprop fixed random cotangents of out and final state; return
    ``(out, final_state, {name: grad})``."""
    leaves = _leaves(args)
    out, last = fn(**leaves, return_final_state=True, **flags)
    g = torch.Generator().manual_seed(123)
    go = torch.randn(out.shape, generator=g).to(out.dtype)
    gh = torch.randn(last.shape, generator=g).to(last.dtype)
    ((out.float() * go.float()).sum() + (last * gh).sum()).backward()
    # an input that does not reach the loss (e.g. everything but the state at L = 0) has
    # grad None in one implementation and zeros in another: both mean zero
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v))
             for k, v in leaves.items() if v is not None}
    return out.detach(), last.detach(), grads


def assert_close(actual, expected, rtol, atol, what):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def compare(args, rtol_atol, grad_rtol_atol, reference_dtype=None, **flags):
    """cpu vs ref: outputs, final state, all gradients. ``reference_dtype`` runs the
    reference on inputs cast to that dtype (e.g. float64 as the ground truth)."""
    out, last, grads = run_with_grads(ss_cpu.selective_scan_cpu, args, **flags)
    ref_args = args
    if reference_dtype is not None:
        ref_args = {k: (v.to(reference_dtype) if v is not None else None) for k, v in args.items()}
    r_out, r_last, r_grads = run_with_grads(selective_scan_ref, ref_args, **flags)
    if reference_dtype is not None:
        r_out, r_last = r_out.to(out.dtype), r_last.to(last.dtype)
        r_grads = {k: v.to(grads[k].dtype) for k, v in r_grads.items()}
    assert_close(out, r_out, *rtol_atol, "out")
    assert_close(last, r_last, *rtol_atol, "final state")
    assert set(grads) == set(r_grads)
    for k in grads:
        assert torch.isfinite(grads[k]).all(), f"grad {k} not finite"
        assert_close(grads[k], r_grads[k], *grad_rtol_atol, f"grad {k}")


FEATURES = {
    "full": dict(with_D=True, with_z=True, with_bias=True, with_init=True, groups=2),
    "bare": dict(with_D=False, with_z=False, with_bias=False, with_init=False, groups=0),
    "z_only_G1": dict(with_D=False, with_z=True, with_bias=False, with_init=False, groups=1),
}


@needs_cpu
@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=str)
@pytest.mark.parametrize("features", list(FEATURES))
def test_cpu_matches_ref(dtype, scheme, features):
    args = make_inputs(dtype=dtype, **FEATURES[features])
    softplus = features != "bare"
    if not softplus:  # Δ is used as given: keep it a positive step
        args["delta"] = args["delta"].abs()
    compare(args, *TOL[dtype], scheme=scheme, delta_softplus=softplus)


@needs_cpu
@pytest.mark.parametrize("L_offset", [(0, 0), (0, 1), (1, -1), (1, 0), (1, 1), (2, 5)])
def test_chunk_and_lane_edges(L_offset):
    """Lengths around the checkpoint chunk (k·CHUNK + r) and a channel count that leaves
    partial SIMD blocks (dim 22 in 2 groups = 11 channels per group)."""
    k, r = L_offset
    L = k * ss_cpu.CHUNK + r
    args = make_inputs(batch=1, dim=22, L=L, N=3, groups=2, dtype=torch.float64)
    compare(args, *TOL[torch.float64], delta_softplus=True)


@needs_cpu
@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
def test_hard_mode_long_slow_decay(scheme):
    """Decay near 1 (A ~ -1e-4, one A exactly 0, Δ ~ 1e-3) over L = 16384, fp32 kernel:
    outputs and final state against the float64 reference; gradients against the kernel
    in float64 (itself pinned to the reference by the tests above; the reference's
    autograd through 16384 Python steps would take minutes)."""
    L = 16384
    g = torch.Generator().manual_seed(1)
    args = dict(
        u=torch.randn(1, 2, L, generator=g),
        delta=torch.full((1, 2, L), -7.0) + 0.1 * torch.randn(1, 2, L, generator=g),
        A=-1e-4 * torch.rand(2, 2, generator=g),
        B=torch.randn(1, 2, L, generator=g), C=torch.randn(1, 2, L, generator=g),
        D=None, z=None, delta_bias=None, initial_state=torch.randn(1, 2, 2, generator=g))
    args["A"][1, 1] = 0.0  # exact A = 0: zoh must take its Δ·B limit
    f64 = {k: (v.double() if v is not None else None) for k, v in args.items()}
    flags = dict(scheme=scheme, delta_softplus=True)
    out, last, grads = run_with_grads(ss_cpu.selective_scan_cpu, args, **flags)
    with torch.no_grad():
        r_out, r_last = selective_scan_ref(**f64, return_final_state=True, **flags)
    # the state integrates ~16 steps' worth of input per unit decay: compare relative to scale
    assert_close(out, r_out.float(), 1e-3, 1e-3 * float(r_out.abs().max()), "out")
    assert_close(last, r_last.float(), 1e-3, 1e-3 * float(r_last.abs().max()), "final state")
    # and no worse than fp32 itself allows: the fp32 reference's own error against float64
    with torch.no_grad():
        o32, h32 = selective_scan_ref(**args, return_final_state=True, **flags)
    rel = lambda a, b: float((a.double() - b).abs().max() / b.abs().max())  # noqa: E731
    assert rel(out, r_out) <= 1.5 * rel(o32, r_out) + 1e-6
    assert rel(last, r_last) <= 1.5 * rel(h32, r_last) + 1e-6
    _, _, g64 = run_with_grads(ss_cpu.selective_scan_cpu, f64, **flags)
    for k, v in grads.items():
        ref = g64[k].to(v.dtype)
        assert torch.isfinite(v).all(), f"grad {k} not finite"
        assert_close(v, ref, 2e-3, 2e-3 * float(ref.abs().max()), f"grad {k}")


@needs_cpu
@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
def test_varlen_equals_separate_sequences(scheme):
    lengths = [5, 0, 64, 1, 60]  # includes an empty sequence
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    L = int(cu[-1])
    args = make_inputs(batch=1, dim=8, L=L, N=4, groups=2, dtype=torch.float64)
    args["initial_state"] = torch.randn(len(lengths), 8, 4, dtype=torch.float64)
    out, last, grads = run_with_grads(ss_cpu.selective_scan_cpu, args, cu_seqlens=cu,
                                      scheme=scheme, delta_softplus=True)
    # each sequence on its own, through the public op with the cpu backend
    outs, lasts = [], []
    for s in range(len(lengths)):
        a, b = int(cu[s]), int(cu[s + 1])
        sl = lambda x: x[..., a:b]  # noqa: E731
        o, h = selective_scan(sl(args["u"]), sl(args["delta"]), args["A"], sl(args["B"]),
                              sl(args["C"]), args["D"], sl(args["z"]), args["delta_bias"], True,
                              args["initial_state"][s:s + 1], True, scheme, backend="cpu")
        outs.append(o)
        lasts.append(h)
    torch.testing.assert_close(out, torch.cat(outs, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, torch.cat(lasts, 0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last[1], args["initial_state"][1])  # empty sequence
    r_out, r_last, r_grads = run_with_grads(selective_scan_ref, args, cu_seqlens=cu,
                                            scheme=scheme, delta_softplus=True)
    torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-10)
    for k in r_grads:
        torch.testing.assert_close(grads[k], r_grads[k], rtol=1e-9, atol=1e-9,
                                   msg=lambda m: f"grad {k}: {m}")


@needs_cpu
def test_dispatch_auto_picks_cpu_and_matches():
    args = make_inputs(dtype=torch.float32)
    y_auto = selective_scan(**args, delta_softplus=True)
    y_cpu = selective_scan(**args, delta_softplus=True, backend="cpu")
    y_ref = selective_scan(**args, delta_softplus=True, backend="ref")
    assert torch.equal(y_auto, y_cpu)
    torch.testing.assert_close(y_cpu, y_ref, rtol=6e-4, atol=2e-3)


@needs_cpu
def test_grads_without_final_state_output():
    """return_final_state=False: the final-state cotangent is absent (None) in backward."""
    args = make_inputs(batch=1, dim=12, L=70, N=4, groups=2, dtype=torch.float64)
    grads = []
    for fn in (ss_cpu.selective_scan_cpu, selective_scan_ref):
        leaves = _leaves(args)
        y = fn(**leaves, delta_softplus=True, scheme="zoh")
        (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum().backward()
        grads.append({k: v.grad for k, v in leaves.items() if v is not None})
    for k, g in grads[1].items():
        torch.testing.assert_close(grads[0][k], g, rtol=1e-9, atol=1e-9,
                                   msg=lambda m: f"grad {k}: {m}")


@needs_cpu
def test_nan_in_activations_propagates():
    """The polynomial exp clamps its argument range but must not swallow NaN."""
    args = make_inputs(batch=1, dim=4, L=10, N=3, dtype=torch.float32)
    args["delta"][0, 1, 4] = float("nan")
    y = ss_cpu.selective_scan_cpu(**args, delta_softplus=True)
    assert torch.isnan(y[0, 1, 4:]).all()
    assert not torch.isnan(y[0, 0]).any() and not torch.isnan(y[0, 1, :4]).any()


@needs_cpu
def test_torch_compile_fullgraph_forward_and_backward():
    args = make_inputs(batch=1, dim=8, L=40, N=4, groups=2, dtype=torch.float32)

    def f(u, delta, A, B, C, D, z, delta_bias, initial_state):
        y, h = selective_scan(u, delta, A, B, C, D, z, delta_bias, True, initial_state, True,
                              backend="cpu")
        return (y * y).sum() + h.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager_leaves, comp_leaves = _leaves(args), _leaves(args)
    loss_e = f(**eager_leaves)
    loss_c = compiled(**comp_leaves)
    torch.testing.assert_close(loss_c, loss_e)
    loss_e.backward()
    loss_c.backward()
    for k, v in eager_leaves.items():
        torch.testing.assert_close(comp_leaves[k].grad, v.grad, msg=lambda m: f"grad {k}: {m}")


def test_build_failure_falls_back_with_warning(monkeypatch):
    """With the extension build forced to fail: "auto" gives the reference result and an
    ExtensionBuildWarning is raised; an explicit backend="cpu" raises BackendUnavailable."""
    from torch.utils import cpp_extension

    def broken_load(*a, **k):
        raise RuntimeError("forced compiler failure (test)")

    b = backends("selective_scan")["cpu"]
    monkeypatch.setattr(cpp_extension, "load", broken_load)
    monkeypatch.setattr(_build, "_CACHE", {})
    monkeypatch.setattr(_build, "_FAILED", {})
    monkeypatch.delenv("HJSEQ_NO_BUILD", raising=False)
    for attr, val in (("_loaded", False), ("_fn", None), ("_error", None)):
        monkeypatch.setattr(b, attr, val)
    args = make_inputs(batch=1, dim=4, L=16, N=3, dtype=torch.float32)
    with pytest.warns(_build.ExtensionBuildWarning, match="forced compiler failure"):
        y = selective_scan(**args, delta_softplus=True)
    torch.testing.assert_close(y, selective_scan_ref(**args, delta_softplus=True), rtol=0,
                               atol=0)
    with pytest.raises(BackendUnavailable, match="forced compiler failure"):
        selective_scan(**args, delta_softplus=True, backend="cpu")


def _bad(**over):
    args = make_inputs(batch=2, dim=6, L=8, N=3, groups=2, dtype=torch.float32)
    args.update(over)
    return args


BAD_CALLS = {
    "u rank": (dict(u=torch.randn(6, 8)), ValueError, "u must be 3-D"),
    "u dtype": (dict(u=torch.ones(2, 6, 8, dtype=torch.int64)), TypeError, "u must be a real"),
    "delta shape": (dict(delta=torch.randn(2, 6, 7)), ValueError, "delta must have shape"),
    "delta dtype": (dict(delta=torch.randn(2, 6, 8, dtype=torch.float64)), TypeError,
                    "delta must have u's dtype"),
    "A shape": (dict(A=torch.randn(5, 3)), ValueError, "A must have shape \\(D, N\\)"),
    "B shape": (dict(B=torch.randn(2, 2, 4, 8)), ValueError, "B must have shape"),
    "C rank": (dict(C=torch.randn(8)), ValueError, "C must be \\(B, N, L\\)"),
    "groups": (dict(B=torch.randn(2, 4, 3, 8), C=torch.randn(2, 4, 3, 8)), ValueError,
               "G = 4 groups"),
    "D shape": (dict(D=torch.randn(5)), ValueError, "D must have shape"),
    "z shape": (dict(z=torch.randn(2, 6, 9)), ValueError, "z must have shape"),
    "bias NaN": (dict(delta_bias=torch.full((6,), float("nan"))), ValueError,
                 "delta_bias contains NaN"),
    "init shape": (dict(initial_state=torch.randn(2, 3, 6)), ValueError,
                   "initial_state must have shape"),
    "scheme": (dict(scheme="rk4"), ValueError, "scheme must be one of"),
    "varlen batch": (dict(cu_seqlens=torch.tensor([0, 8])), ValueError, "batch must be 1"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_validation_names_the_argument(case):
    over, exc, match = BAD_CALLS[case]
    over = dict(over)
    scheme = over.pop("scheme", "euler_b")
    with pytest.raises(exc, match=match):
        selective_scan(**_bad(**over), scheme=scheme, backend="ref")


@pytest.mark.parametrize("cu, match", [
    (torch.tensor([0, 3, 7]), "end at L = 8"),
    (torch.tensor([0, 5, 3, 8]), "non-decreasing"),
    (torch.tensor([0.0, 8.0]), "int32 or int64"),
    (torch.tensor([[0, 8]]), "1-D"),
])
def test_validation_cu_seqlens(cu, match):
    args = make_inputs(batch=1, dim=4, L=8, N=3, groups=0, with_init=False)
    with pytest.raises((ValueError, TypeError), match=match):
        selective_scan(**args, cu_seqlens=cu, backend="ref")
