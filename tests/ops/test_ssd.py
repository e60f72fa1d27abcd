"""ssd / ssd_scan: every backend vs the sequential reference (outputs, final states, every
gradient, per dtype), chunked = sequential for any chunk size (resets and packed-sequence
starts inside chunks), varlen = separate sequences, seq_idx, schemes against
selective_scan, mamba-ssm's own torch references as oracles, validation, compile."""
from __future__ import annotations

import sys
import types

import pytest
import torch
from _utils import GRAD_RTOL, RTOL, assert_close, grads_of

import hjseq.ops._build as build
from hjseq.ops import BackendUnavailable, selective_scan, ssd, ssd_scan
from hjseq.ops._registry import Backend, available, backends

DTYPES = [torch.float64, torch.float32, torch.bfloat16]
_AVAIL = available("ssd_scan", "cpu")
BACKENDS = [n for n in ("cpu", "triton") if _AVAIL.get(n) is None]


def test_cpu_backend_builds():
    assert "cpu" in BACKENDS, _AVAIL["cpu"]


def _scan_inputs(b, l, h, p, g, n, dtype=torch.float64, nseq=None, with_init=True,
                 resets=(), seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x = r(b, l, h, p)
    ld = -torch.rand(b, l, h, generator=gen, dtype=torch.float64)
    for t, hh in resets:  # full resets of head hh at token t (every batch row)
        ld[:, t, hh] = float("-inf")
    B, C = r(b, l, g, n), r(b, l, g, n)
    S0 = r(nseq or b, h, p, n) if with_init else None
    ts = [t.to(dtype).requires_grad_() if t is not None else None for t in (x, ld, B, C, S0)]
    return ts


def _run(backend, ins, chunk, cu=None):
    x, ld, B, C, S0 = ins
    y, f = ssd_scan(x, ld, B, C, S0, cu_seqlens=cu, return_final_states=True,
                    chunk_size=chunk, backend=backend)
    wrt = [t for t in ins if t is not None]
    return [y, f, *grads_of([y, f], wrt)]


NAMES = ["y", "final", "dx", "dlog_decay", "dB", "dC", "dinit"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_init", [False, True])
def test_matches_ref(backend, dtype, with_init):
    # odd sizes: partial chunks, partial SIMD tiles, groups shared by 2 heads
    ins = _scan_inputs(2, 37, 4, 5, 2, 7, dtype, with_init=with_init, resets=[(9, 1)])
    ref = _run("ref", ins, 8)
    out = _run(backend, ins, 8)
    assert out[0].dtype == dtype and out[1].dtype == (torch.float64 if dtype == torch.float64
                                                        else torch.float32)
    for name, r, o in zip(NAMES, ref, out):
        tol = RTOL[dtype] if name in ("y", "final") else GRAD_RTOL[dtype]
        assert o.dtype == r.dtype, name
        assert_close(r, o, tol, f"{backend} {dtype} {name}")


# chunk 1 is not run under the Triton interpreter: 90 chunks there take ~15 s
@pytest.mark.parametrize("backend, chunk", [(b, c) for b in BACKENDS for c in (1, 5, 16, 64)
                                             if not (b == "triton" and c == 1)])
def test_chunked_equals_sequential(backend, chunk):
    """l = 45 is divisible by none of the chunk sizes but 1 and 5; resets (−inf) land at a
    chunk start, inside a chunk and at the last token."""
    ins = _scan_inputs(2, 45, 2, 3, 1, 4, resets=[(0, 0), (16, 1), (23, 0), (44, 1)])
    for name, r, o in zip(NAMES, _run("ref", ins, chunk), _run(backend, ins, chunk)):
        assert_close(r, o, 1e-12, f"{backend} chunk={chunk} {name}")


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
@pytest.mark.parametrize("with_init", [False, True])
def test_varlen_equals_separate_sequences(backend, with_init):
    # an empty and a length-1 sequence; starts inside what would be a chunk of 16
    cu = torch.tensor([0, 5, 5, 6, 30, 50], dtype=torch.int32)
    S = cu.numel() - 1
    ins = _scan_inputs(1, 50, 4, 3, 2, 5, nseq=S, with_init=with_init)
    x, ld, B, C, S0 = ins
    packed = _run(backend, ins, 16, cu)
    ys, fs = [], []
    for s in range(S):
        lo, hi = int(cu[s]), int(cu[s + 1])
        y, f = ssd_scan(x[:, lo:hi], ld[:, lo:hi], B[:, lo:hi], C[:, lo:hi],
                        None if S0 is None else S0[s:s + 1], return_final_states=True,
                        chunk_size=16, backend=backend)
        ys.append(y)
        fs.append(f)
    y, f = torch.cat(ys, 1), torch.cat(fs, 0)
    separate = [y, f, *grads_of([y, f], [t for t in ins if t is not None])]
    for name, r, o in zip(NAMES, separate, packed):
        assert_close(r, o, 1e-12, f"{backend} varlen {name}")
    if S0 is not None:  # the empty sequence hands its initial state through
        assert torch.equal(packed[1][1], S0[1].detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_final_state_output_and_zero_length(backend):
    x, ld, B, C, _ = _scan_inputs(1, 20, 2, 3, 1, 4, with_init=False)
    y = ssd_scan(x, ld, B, C, chunk_size=8, backend=backend)
    y_r = ssd_scan(x, ld, B, C, chunk_size=8, backend="ref")
    for r, o in zip([y_r, *grads_of([y_r], [x, ld, B, C])], [y, *grads_of([y], [x, ld, B, C])]):
        assert_close(r, o, 1e-12, f"{backend} y only")
    e = [t[:, :0].detach() for t in (x, ld, B, C)]
    S0 = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    y0, f0 = ssd_scan(*e, S0, return_final_states=True, backend=backend)
    assert y0.shape == (1, 0, 2, 3) and torch.equal(f0, S0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_slow_decay_float32(backend):
    """Decay near 1 over 2048 tokens: the state integrates the whole sequence; float32
    chunked kernels stay close to the float64 reference."""
    gen = torch.Generator().manual_seed(3)
    l = 512 if backend == "triton" else 2048  # the Triton interpreter is slow
    x = torch.randn(1, l, 2, 4, generator=gen, dtype=torch.float64)
    ld = -1e-4 * torch.rand(1, l, 2, generator=gen, dtype=torch.float64)
    B, C = (torch.randn(1, l, 1, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    y64 = ssd_scan(x, ld, B, C, chunk_size=64, backend="cpu")
    y64_ref = ssd_scan(x[:, :256], ld[:, :256], B[:, :256], C[:, :256], backend="ref")
    assert_close(y64_ref, y64[:, :256], 1e-12, "fp64 prefix")
    y32 = ssd_scan(x.float(), ld.float(), B.float(), C.float(), chunk_size=64, backend=backend)
    assert_close(y64, y32, 1e-5, f"{backend} fp32 long")


# ---- the public ssd (mamba_chunk_scan_combined's call) -------------------------------------

def _ssd_inputs(b, l, h, p, g, n, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    return dict(x=r(b, l, h, p), dt=r(b, l, h), A=-torch.rand(h, generator=gen,
                                                               dtype=torch.float64).to(dtype) * 2,
                B=r(b, l, g, n), C=r(b, l, g, n), D=r(h), z=r(b, l, h, p), dt_bias=r(h))


@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
@pytest.mark.parametrize("D_shape", ["h", "hp"])
def test_ssd_equals_selective_scan(scheme, D_shape):
    """A scalar-A head of width p is p selective-scan channels with A repeated over n."""
    b, l, h, p, g, n = 2, 23, 4, 3, 2, 5
    a = _ssd_inputs(b, l, h, p, g, n)
    D = a["D"] if D_shape == "h" else torch.randn(h, p, dtype=torch.float64)
    S0 = torch.randn(b, h, p, n, dtype=torch.float64)
    y, f = ssd(a["x"], a["dt"], a["A"], a["B"], a["C"], 8, D=D, z=a["z"], dt_bias=a["dt_bias"],
               initial_states=S0, dt_softplus=True, return_final_states=True, scheme=scheme)
    hp = lambda t: t.permute(0, 2, 3, 1).reshape(b, h * p, l)  # noqa: E731  (b,l,h,p)->(b,hp,l)
    y_s, f_s = selective_scan(
        hp(a["x"]), hp(a["dt"][..., None].expand(b, l, h, p)),
        a["A"][:, None, None].expand(h, p, n).reshape(h * p, n),
        a["B"].permute(0, 2, 3, 1), a["C"].permute(0, 2, 3, 1),
        D=(D[:, None].expand(h, p) if D.dim() == 1 else D).reshape(h * p), z=hp(a["z"]),
        delta_bias=a["dt_bias"][:, None].expand(h, p).reshape(h * p), delta_softplus=True,
        initial_state=S0.reshape(b, h * p, n), return_final_state=True, scheme=scheme,
        backend="ref")
    assert_close(y_s, hp(y), 1e-12, f"{scheme} y")
    assert_close(f_s, f.reshape(b, h * p, n), 1e-12, f"{scheme} final")


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
def test_ssd_seq_idx_resets_like_packed_sequences(backend):
    b, l, h, p, g, n = 1, 30, 2, 3, 1, 4
    a = _ssd_inputs(b, l, h, p, g, n)
    cu = torch.tensor([0, 7, 8, 21, 30])
    seq_idx = torch.repeat_interleave(torch.arange(4), cu[1:] - cu[:-1])[None].to(torch.int32)
    kw = dict(D=a["D"], z=a["z"], dt_bias=a["dt_bias"], dt_softplus=True, backend=backend)
    y_idx = ssd(a["x"], a["dt"], a["A"], a["B"], a["C"], 8, seq_idx=seq_idx, **kw)
    y_cu = ssd(a["x"], a["dt"], a["A"], a["B"], a["C"], 8, cu_seqlens=cu, **kw)
    assert_close(y_cu, y_idx, 1e-12, "seq_idx")


def test_ssd_dt_limit_and_dtypes():
    a = _ssd_inputs(1, 12, 2, 3, 1, 4, dtype=torch.bfloat16)
    y = ssd(a["x"], a["dt"], a["A"], a["B"], a["C"], 4, dt_softplus=True, dt_limit=(0.1, 0.5))
    assert y.dtype == torch.bfloat16
    f32 = {k: v.float() for k, v in a.items()}
    y32 = ssd(f32["x"], f32["dt"], f32["A"], f32["B"], f32["C"], 4, dt_softplus=True,
              dt_limit=(0.1, 0.5), backend="ref")
    assert_close(y32, y.float(), RTOL[torch.bfloat16], "bf16 vs fp32 of the same values")
    # the limit is applied: dt = 0.5 everywhere equals a huge raw dt clamped to 0.5
    big = {**f32, "dt": torch.full_like(f32["dt"], 50.0)}
    half = {**f32, "dt": torch.full_like(f32["dt"], 0.5)}
    y_big = ssd(big["x"], big["dt"], big["A"], big["B"], big["C"], 4, dt_limit=(0.1, 0.5))
    y_half = ssd(half["x"], half["dt"], half["A"], half["B"], half["C"], 4)
    assert_close(y_half, y_big, 1e-6, "dt_limit")


def _mamba():
    """mamba-ssm's pure-torch references, importable on CPU once its CUDA extensions are
    stubbed; None (with the reason) when mamba-ssm is not installed."""
    stubs = [m for m in ("selective_scan_cuda", "causal_conv1d_cuda") if m not in sys.modules]
    for m in stubs:
        sys.modules[m] = types.ModuleType(m)
    try:
        import mamba_ssm.ops.selective_scan_interface as ssi
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
        from mamba_ssm.ops.triton import ssd_combined
    except ImportError as e:
        return None, f"mamba-ssm not importable: {e}"
    finally:  # no stand-in stays behind: other tests (transformers') probe these modules
        for m in stubs:
            sys.modules.pop(m, None)
    return (ssd_minimal_discrete, ssd_combined, ssi), None


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
def test_matches_mamba_ssd_minimal_discrete(backend):
    mods, why = _mamba()
    if mods is None:
        pytest.skip(why)
    ssd_minimal_discrete = mods[0]
    b, l, h, p, n = 2, 48, 3, 4, 6
    ins = _scan_inputs(b, l, h, p, h, n, with_init=True)
    x, ld, B, C, S0 = (t.detach() for t in ins)
    Y, final = ssd_minimal_discrete(x, ld, B, C, 16, initial_states=S0[:, None])
    y, f = ssd_scan(x, ld, B, C, S0, return_final_states=True, chunk_size=16, backend=backend)
    assert_close(Y, y, 1e-12, "ssd_minimal_discrete y")
    assert_close(final, f, 1e-12, "ssd_minimal_discrete final")


@pytest.mark.parametrize("D_shape", ["h", "hp"])
def test_matches_mamba_chunk_scan_refs(monkeypatch, D_shape):
    """mamba-ssm's ssd_chunk_scan_combined_ref (its chunked torch path, float32 inside, l a
    multiple of the chunk) and ssd_selective_scan through its torch selective_scan_ref."""
    mods, why = _mamba()
    if mods is None:
        pytest.skip(why)
    _, ssd_combined, ssi = mods
    monkeypatch.setattr(ssi, "selective_scan_fn", ssi.selective_scan_ref)
    a = _ssd_inputs(2, 48, 4, 3, 2, 5, dtype=torch.float32)
    D = a["D"] if D_shape == "h" else torch.randn(4, 3)
    args = (a["x"], a["dt"], a["A"], a["B"], a["C"])
    kw = dict(D=D, z=a["z"], dt_bias=a["dt_bias"], dt_softplus=True)
    ours = ssd(*args, 16, **kw)
    assert_close(ssd_combined.ssd_chunk_scan_combined_ref(*args, 16, **kw), ours, 1e-5,
                 "ssd_chunk_scan_combined_ref")
    assert_close(ssd_combined.ssd_selective_scan(*args, **kw), ours, 1e-5, "ssd_selective_scan")
    lim = (0.05, 0.8)
    assert_close(ssd_combined.ssd_selective_scan(*args, **kw, dt_limit=lim),
                 ssd(*args, 16, **kw, dt_limit=lim), 1e-5, "ssd_selective_scan dt_limit")


# ---- dispatch, fallback, validation, compile -------------------------------------------

def test_auto_picks_cpu():
    from hjseq.ops import resolve
    x, ld, B, C, _ = _scan_inputs(1, 4, 2, 3, 1, 4, with_init=False)
    assert resolve("ssd_scan", "auto", "cpu", x=x, log_decay=ld, B=B, C=C)[0] == "cpu"


def test_build_failure_falls_back_to_ref_with_warning(tmp_path, monkeypatch):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "ssd.cpp").write_text("#error forced build failure for a test\n")
    monkeypatch.setattr(build, "csrc_dir", lambda: tmp_path)
    monkeypatch.setattr(build, "_CACHE", {})
    monkeypatch.setattr(build, "_FAILED", {})
    monkeypatch.setenv("HJSEQ_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("HJSEQ_NO_BUILD", raising=False)
    monkeypatch.setitem(backends("ssd_scan"), "cpu",
                        Backend("ssd_scan", "cpu", "hjseq.ops.ssd.cpu", ("cpu",)))
    x, ld, B, C, _ = (t.detach() if t is not None else None
                      for t in _scan_inputs(1, 6, 2, 3, 1, 4, with_init=False))
    with pytest.warns(build.ExtensionBuildWarning, match="hjseq_ssd"):
        y = ssd_scan(x, ld, B, C)
    assert_close(ssd_scan(x, ld, B, C, backend="ref"), y, 0.0, "fallback")
    with pytest.raises(BackendUnavailable, match="ssd_scan backend 'cpu' unavailable"):
        ssd_scan(x, ld, B, C, backend="cpu")


_x, _ld = torch.randn(2, 6, 4, 3), -torch.rand(2, 6, 4)
_B = torch.randn(2, 6, 2, 5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=_x[0]), r"x must have shape \(b, l, h, p\)"),
    (dict(log_decay=_ld[..., :3]), r"log_decay must have shape \(b, l, h\)"),
    (dict(B=torch.randn(2, 6, 3, 5), C=torch.randn(2, 6, 3, 5)), "B has g = 3 groups"),
    (dict(C=torch.randn(2, 6, 2, 4)), r"C must have shape \(b, l, g, n\) like B"),
    (dict(initial_states=torch.zeros(2, 4, 3, 4)),
     r"initial_states must have shape \(b, h, p, n\)"),
    (dict(log_decay=_ld.masked_fill(_ld < -0.5, float("nan"))), "log_decay contains NaN"),
    (dict(log_decay=_ld.masked_fill(_ld < -0.5, float("inf"))), r"log_decay contains \+inf"),
    (dict(chunk_size=0), "chunk_size must be a positive int"),
    (dict(x=_x.int()), "x must be float32/float64"),
    (dict(cu_seqlens=torch.tensor([0, 6])), "batch size must be 1"),
    (dict(backend="nope"), "backend='nope' is not one of"),
])
def test_scan_validation_names_the_argument(kwargs, match):
    args = dict(x=_x, log_decay=_ld, B=_B, C=_B, **{"chunk_size": 4}) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        ssd_scan(**args)


def test_scan_validation_cu_seqlens():
    x, ld, B = _x[:1], _ld[:1], _B[:1]
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to L=6"):
        ssd_scan(x, ld, B, B, cu_seqlens=torch.tensor([0, 4, 3]))
    with pytest.raises(ValueError, match=r"initial_states must have shape \(s, h, p, n\)"):
        ssd_scan(x, ld, B, B, initial_states=torch.zeros(1, 4, 3, 5),
                 cu_seqlens=torch.tensor([0, 2, 6]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(dt=torch.randn(2, 6, 3)), r"dt must have shape \(b, l, h\)"),
    (dict(A=torch.randn(4, 5)), r"A must have shape \(h,\)"),
    (dict(D=torch.randn(4, 2)), r"D must have shape \(h,\) = \(4,\) or \(h, p\)"),
    (dict(z=torch.randn(2, 6, 4, 2)), r"z must have shape \(b, l, h, p\) like x"),
    (dict(dt_bias=torch.randn(3)), r"dt_bias must have shape \(h,\)"),
    (dict(seq_idx=torch.zeros(2, 5, dtype=torch.int32)), r"seq_idx must have shape \(b, l\)"),
    (dict(seq_idx=torch.zeros(2, 6)), "seq_idx must be an int32/int64 tensor"),
    (dict(scheme="rk4"), "scheme must be one of"),
    (dict(dt_limit=(1.0, 0.5)), "dt_limit must satisfy min <= max"),
    (dict(A=torch.tensor([0.0, float("nan"), 1.0, 1.0])), "A contains NaN"),
    (dict(chunk_size=-2), "chunk_size must be a positive int"),
])
def test_ssd_validation_names_the_argument(kwargs, match):
    args = dict(x=_x, dt=torch.rand(2, 6, 4), A=-torch.rand(4), B=_B, C=_B, chunk_size=4) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        ssd(**args)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend unavailable")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_kept_cb_and_recomputed_cb_give_the_same_gradients(dtype):
    """The backward reads the forward's C Bᵀ per chunk when it was kept, else recomputes it
    (as Mamba-3's op does): both paths, through varlen, resets, partial chunks and groups
    shared by 2 heads, must give the same numbers (the same products in the same order)."""
    from hjseq.ops.ssd.cpu import ssd_scan_cpu

    cu = torch.tensor([0, 7, 30, 50])
    ins = _scan_inputs(1, 50, 4, 3, 2, 5, dtype, nseq=3, resets=[(12, 1), (40, 3)])
    outs = []
    for keep in (True, False):
        y, f = ssd_scan_cpu(*ins, cu_seqlens=cu, return_final_states=True, chunk_size=16,
                            keep_cb=keep)
        outs.append([y, f, *grads_of([y, f], ins)])
    for name, kept, recomputed in zip(NAMES, *outs):
        assert torch.equal(kept, recomputed), name


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend unavailable")
def test_cpu_keeps_cb_only_when_a_backward_will_run(monkeypatch):
    from hjseq.ops.ssd import cpu as ssd_cpu

    ext, calls = ssd_cpu._ext(), []
    spy = types.SimpleNamespace(
        forward=lambda *a: calls.append("forward") or ext.forward(*a),
        forward_keep_cb=lambda *a: calls.append("keep_cb") or ext.forward_keep_cb(*a),
        backward=ext.backward)
    monkeypatch.setattr(ssd_cpu, "_ext", lambda: spy)
    ins = _scan_inputs(1, 20, 2, 3, 1, 4, torch.float32)
    with torch.no_grad():
        ssd_scan(*ins, chunk_size=8, backend="cpu")
    ssd_scan(*(t.detach() for t in ins), chunk_size=8, backend="cpu")
    assert calls == ["forward", "forward"]  # inference: nothing kept
    y = ssd_scan(*ins, chunk_size=8, backend="cpu")
    assert calls[-1] == "keep_cb"
    y.sum().backward()
    assert all(t.grad is not None for t in ins)


@pytest.mark.no_nan_fill
def test_torch_compile_fullgraph_cpu():
    x, ld, B, C, S0 = _scan_inputs(2, 19, 2, 3, 1, 4, dtype=torch.float32)
    f = torch.compile(lambda *a: ssd_scan(*a, return_final_states=True, chunk_size=8,
                                          backend="cpu"), fullgraph=True)
    y, fin = f(x, ld, B, C, S0)
    got = [y, fin, *grads_of([y, fin], [x, ld, B, C, S0])]
    y_r, f_r = ssd_scan(x, ld, B, C, S0, return_final_states=True, backend="ref")
    want = [y_r, f_r, *grads_of([y_r, f_r], [x, ld, B, C, S0])]
    for name, r, o in zip(NAMES, want, got):
        assert_close(r, o, 1e-4, f"compiled {name}")


# ---- selective_scan with time-invariant B/C (D, N), as S4D ---------------------------------

_SS_AVAIL = available("selective_scan", "cpu")
SS_BACKENDS = ["ref", *[n for n in ("cpu", "triton") if _SS_AVAIL.get(n) is None]]


def _s4d_inputs(layout_C: str, b=2, d=6, l=19, n=4, nseq=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    C = {"DN": r(d, n), "BNL": r(b, n, l), "BGNL": r(b, 2, n, l)}[layout_C]
    t = dict(u=r(b, d, l), delta=0.5 * r(b, d, l), A=-torch.rand(d, n, generator=gen,
                                                                  dtype=torch.float64),
             B=r(d, n), C=C, D=r(d), z=r(b, d, l), delta_bias=r(d),
             initial_state=r(nseq or b, d, n))
    return {k: v.requires_grad_() for k, v in t.items()}


@pytest.mark.parametrize("backend, layout_C", [(b, c) for b in SS_BACKENDS
                                               for c in ("DN", "BNL", "BGNL")
                                               if b != "triton" or c != "BNL"])  # interpreter: slow
@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
def test_selective_scan_time_invariant_B(backend, layout_C, scheme):
    """B (D, N) (with C time-invariant too, or per token): the dispatcher gives the fused
    backends one group per channel; outputs, final state and every gradient equal the
    reference's direct broadcast."""
    from hjseq.ops.selective_scan.ref import selective_scan_ref
    t = _s4d_inputs(layout_C)
    names = list(t)
    res = []
    for fn in (selective_scan_ref, lambda **kw: selective_scan(**kw, backend=backend)):
        y, h = fn(**t, delta_softplus=True, return_final_state=True, scheme=scheme)
        res.append([y, h, *grads_of([y, h], list(t.values()))])
    for name, r, o in zip(["y", "final", *names], *res):
        assert_close(r, o, 1e-12, f"{backend} {layout_C} {scheme} {name}")


@pytest.mark.parametrize("backend", SS_BACKENDS)
def test_selective_scan_time_invariant_varlen(backend):
    cu = torch.tensor([0, 4, 4, 19])
    t = _s4d_inputs("DN", b=1, nseq=3)
    y, h = selective_scan(**t, return_final_state=True, cu_seqlens=cu, backend=backend)
    for s in range(3):
        lo, hi = int(cu[s]), int(cu[s + 1])
        part = {k: (v[..., lo:hi] if v.dim() == 3 and k not in ("initial_state",) else v)
                for k, v in t.items()}
        part["initial_state"] = t["initial_state"][s:s + 1]
        ys, hs = selective_scan(**part, return_final_state=True, backend="ref")
        assert_close(ys, y[..., lo:hi], 1e-12, f"{backend} seq {s} y")
        assert_close(hs, h[s:s + 1], 1e-12, f"{backend} seq {s} final")


def test_selective_scan_time_invariant_matches_mamba_ref():
    mods, why = _mamba()
    if mods is None:
        pytest.skip(why)
    ssi = mods[2]
    t = {k: v.detach().float() for k, v in _s4d_inputs("DN").items() if k != "initial_state"}
    want = ssi.selective_scan_ref(**t, delta_softplus=True)
    for backend in SS_BACKENDS:
        assert_close(want, selective_scan(**t, delta_softplus=True, backend=backend), 1e-5,
                     f"mamba selective_scan_ref time-invariant, {backend}")


def test_selective_scan_time_invariant_validation():
    t = {k: v.detach() for k, v in _s4d_inputs("DN").items()}
    with pytest.raises(ValueError, match=r"B must have shape \(D, N\) \(time-invariant\)"):
        selective_scan(**{**t, "B": torch.randn(5, 4, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"or time-invariant \(D, N\)"):
        selective_scan(**{**t, "C": torch.randn(6, dtype=torch.float64)})
