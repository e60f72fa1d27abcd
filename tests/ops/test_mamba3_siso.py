"""mamba3_siso: the chunked backends (torch preprocessing + ssd_scan) vs the sequential
reference (outputs, the four final states, every gradient, per dtype), GQA, varlen = separate
sequences, state passing, decoding step = scan, and mamba-ssm's quadratic (chunk-attention)
test reference as an independent oracle, transcribed below."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _utils import GRAD_RTOL, RTOL, assert_close, grads_of

from hjseq.ops import mamba3_siso, mamba3_siso_step
from hjseq.ops._registry import available

DTYPES = [torch.float64, torch.float32, torch.bfloat16]
_AVAIL = available("mamba3_siso", "cpu")
BACKENDS = [n for n in ("cpu", "triton") if _AVAIL.get(n) is None]
STATE_NAMES = ("angle", "ssm", "k", "v")


def test_cpu_backend_loads():
    assert "cpu" in BACKENDS, _AVAIL["cpu"]


def _inputs(b=2, l=21, hq=1, h=4, n=8, p=4, a=2, nseq=None, states=True, D=True, Z=True,
            dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    DT = F.softplus(r(b, h, l) - 1)
    ADT = -torch.rand(b, h, l, generator=gen, dtype=torch.float64) * DT * 2
    s = nseq or b
    st = ((torch.rand(s, h, a, generator=gen, dtype=torch.float64) * 2 * math.pi,
           r(s, h, p, n), r(s, h, n), r(s, h, p)) if states else None)
    t = dict(Q=r(b, l, hq, n), K=r(b, l, hq, n), V=r(b, l, h, p), ADT=ADT, DT=DT,
             Trap=r(b, h, l), Q_bias=r(h, n), K_bias=r(h, n), Angles=r(b, l, h, a),
             D=r(h) if D else None, Z=r(b, l, h, p) if Z else None)
    t = {k: None if v is None else v.to(dtype).requires_grad_() for k, v in t.items()}
    if st is not None:
        st = tuple(x.to(dtype if i >= 2 else torch.float64 if dtype == torch.float64
                        else torch.float32).requires_grad_() for i, x in enumerate(st))
    t["Input_States"] = st
    return t


def _leaves(ins):
    out = [v for k, v in ins.items() if k != "Input_States" and v is not None]
    return out + list(ins["Input_States"] or ())


def _run(backend, ins, chunk=8, cu=None, grads=True):
    y, *fin = mamba3_siso(**ins, chunk_size=chunk, return_final_states=True, cu_seqlens=cu,
                          backend=backend)
    res = [y, *fin]
    return res + (grads_of(res, _leaves(ins)) if grads else [])


def _names(ins):
    keys = [k for k, v in ins.items() if k != "Input_States" and v is not None]
    st = [f"d{s}_state" for s in STATE_NAMES] if ins["Input_States"] is not None else []
    return ["out", *(f"{s}_state" for s in STATE_NAMES), *(f"d{k}" for k in keys), *st]


# Triton runs under its interpreter here (slow): with input states only (the superset)
CASES = [(b, s) for b in BACKENDS for s in ((False, True) if b == "cpu" else (True,))]


@pytest.mark.parametrize("backend,states", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_ref(backend, dtype, states):
    # GQA (2 Q/K heads, 4 V heads), partial rotary (a = 3 < n/2), partial last chunk
    ins = _inputs(l=21, hq=2, h=4, n=8, p=4, a=3, states=states, dtype=dtype)
    ref, out = _run("ref", ins), _run(backend, ins)
    assert out[0].dtype == dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out[1].dtype == acc and out[2].dtype == acc
    for name, r, o in zip(_names(ins), ref, out):
        tol = (RTOL if name in ("out", "ssm_state") else GRAD_RTOL)[dtype]
        assert_close(r, o, tol, f"{backend} {dtype} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_matches_ref(backend):
    """Packed sequences (one of a single token, a start inside a chunk): outputs, the
    per-sequence final states and every gradient."""
    ins = _inputs(b=1, l=13, nseq=3, hq=2, h=4)
    cu = torch.tensor([0, 4, 5, 13], dtype=torch.int32)
    ref, out = _run("ref", ins, chunk=4, cu=cu), _run(backend, ins, chunk=4, cu=cu)
    for name, r, o in zip(_names(ins), ref, out):
        assert_close(r, o, 1e-10, f"{backend} varlen {name}")


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunk_size_only_changes_roundoff(chunk):
    ins = _inputs(l=13)
    ref, out = _run("ref", ins, grads=False), _run("cpu", ins, chunk=chunk, grads=False)
    for name, r, o in zip(_names(ins), ref, out):
        assert_close(r, o, 1e-12, name)


def test_without_D_and_Z():
    ins = _inputs(D=False, Z=False, l=9)
    for name, r, o in zip(_names(ins), _run("ref", ins), _run("cpu", ins)):
        assert_close(r, o, 1e-10, name)


@pytest.mark.parametrize("backend", ["ref", "cpu"])  # triton: in test_matches_ref
def test_varlen_equals_separate_sequences(backend):
    lens = [5, 1, 11]
    ins = _inputs(b=1, l=sum(lens), nseq=len(lens), hq=1, h=2)
    cu = torch.tensor([0, 5, 6, 17], dtype=torch.int32)
    y, *fin = mamba3_siso(**ins, chunk_size=4, return_final_states=True, cu_seqlens=cu,
                          backend=backend)
    for s, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        one = {k: v for k, v in ins.items()}
        for k in ("Q", "K", "V", "Angles", "Z"):
            one[k] = ins[k][:, lo:hi]
        for k in ("ADT", "DT", "Trap"):
            one[k] = ins[k][:, :, lo:hi]
        one["Input_States"] = tuple(x[s:s + 1] for x in ins["Input_States"])
        ys, *fs = mamba3_siso(**one, return_final_states=True, backend="ref")
        assert_close(ys, y[:, lo:hi], 1e-12, f"seq {s} out")
        for name, f1, f2 in zip(STATE_NAMES, fs, fin):
            assert_close(f1[0], f2[s], 1e-12, f"seq {s} {name} state")


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_state_passing(backend):
    """Scanning [0, m) then [m, l) from the returned states equals one scan over [0, l)."""
    ins = _inputs(l=19)
    y, *fin = mamba3_siso(**ins, return_final_states=True, backend=backend, chunk_size=4)
    m = 7
    cut = lambda lo, hi: {**{k: ins[k][:, lo:hi] for k in ("Q", "K", "V", "Angles", "Z")},  # noqa: E731
                          **{k: ins[k][:, :, lo:hi] for k in ("ADT", "DT", "Trap")},
                          "Q_bias": ins["Q_bias"], "K_bias": ins["K_bias"], "D": ins["D"]}
    y1, *f1 = mamba3_siso(**cut(0, m), Input_States=ins["Input_States"],
                          return_final_states=True, backend=backend, chunk_size=4)
    y2, *f2 = mamba3_siso(**cut(m, 19), Input_States=tuple(f1), return_final_states=True,
                          backend=backend, chunk_size=4)
    assert_close(y, torch.cat([y1, y2], dim=1), 1e-12, "out")
    for name, a, b in zip(STATE_NAMES, fin, f2):
        assert_close(a, b, 1e-12, f"{name} state")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_equals_scan(dtype):
    ins = _inputs(l=6, hq=2, h=4, dtype=dtype)
    y, *fin = mamba3_siso(**ins, return_final_states=True, backend="cpu", chunk_size=4)
    st = ins["Input_States"]
    for t in range(6):
        yt, st = mamba3_siso_step(
            ins["Q"][:, t], ins["K"][:, t], ins["V"][:, t], ins["ADT"][:, :, t],
            ins["DT"][:, :, t], ins["Trap"][:, :, t], ins["Q_bias"], ins["K_bias"],
            ins["Angles"][:, t], ins["D"], ins["Z"][:, t], st)
        assert_close(y[:, t], yt, RTOL[dtype], f"out {t}")
    for name, a, b in zip(STATE_NAMES, fin, st):
        assert a.dtype == b.dtype, name
        assert_close(a, b, RTOL[dtype], f"{name} state")


def test_lambda_one_is_mamba2_ssd():
    """λ = 1 (Trap → +∞) leaves γ = Δ, β = 0: Mamba-2's SSD scan of v·Δ with B = k̃, C = q̃."""
    from hjseq.ops import ssd_scan
    from hjseq.ops.mamba3_siso.ref import rotate_pairs

    ins = _inputs(l=10, states=False, D=False, Z=False, a=4, n=8)
    with torch.no_grad():
        ins["Trap"].fill_(float("inf"))
        y = mamba3_siso(**ins, backend="ref")
        phi = (torch.tanh(ins["Angles"]) * math.pi * ins["DT"].transpose(1, 2)[..., None]
               ).cumsum(1)
        rep = 4
        q = rotate_pairs(ins["Q"].repeat_interleave(rep, 2) + ins["Q_bias"], phi.cos(), phi.sin())
        k = rotate_pairs(ins["K"].repeat_interleave(rep, 2) + ins["K_bias"], phi.cos(), phi.sin())
        ys = ssd_scan(ins["V"] * ins["DT"].transpose(1, 2)[..., None],
                      ins["ADT"].transpose(1, 2), k, q, backend="ref")
    assert_close(ys, y, 1e-12, "out")


# ---------------------------------------------------------------- mamba-ssm's test oracle
def _segsum(x):
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1), 0)
    x = torch.cumsum(x, dim=-2)
    return x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=0), -torch.inf)


def _mamba_fwd_ref(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, states):
    """Our transcription (float64 throughout, one batch row at a time) of
    ``mamba3_siso_fwd_ref`` from mamba-ssm's tests/ops/triton/test_mamba3_siso.py: the
    quadratic chunk-attention form, a different algorithm from both of ours."""
    b, l, hq, n = Q.shape
    h = V.shape[2]
    Angles = torch.tanh(Angles) * math.pi
    Q, K = Q.repeat_interleave(h // hq, 2), K.repeat_interleave(h // hq, 2)

    def rot(x, c, s):
        a = c.shape[-1]
        c = F.pad(c, (0, n // 2 - a), value=1.0)
        s = F.pad(s, (0, n // 2 - a), value=0.0)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(-2)

    outs, finals = [], []
    for i in range(b):
        adt, dt, trap = ADT[i], DT[i], torch.sigmoid(Trap[i])
        ang = torch.cumsum(Angles[i] * dt.transpose(0, 1)[..., None], 0)
        if states is not None:
            ang = ang + states[0][i][None]
        ang = ang - 2 * math.pi * torch.floor(ang / (2 * math.pi))
        if states is not None:
            acc = states[1][i] + states[3][i][:, :, None] * states[2][i][:, None, :] * (
                dt[:, 0] * (1 - trap[:, 0]))[:, None, None]
        else:
            acc = torch.zeros(h, V.shape[-1], n, dtype=V.dtype)
        dt_s, trap_s = F.pad(dt[:, 1:], (0, 1)), F.pad(trap[:, 1:], (0, 1))
        shifted_gamma = dt_s * (1 - trap_s)
        scale = dt * trap + shifted_gamma
        q, k = Q[i] + Q_bias, K[i] + K_bias
        qk_dot = (k * q).sum(-1) * shifted_gamma.transpose(0, 1)
        q, k = rot(q, ang.cos(), ang.sin()), rot(k, ang.cos(), ang.sin())
        ks = k * scale.transpose(0, 1)[..., None]
        qk = torch.tril(torch.einsum("thd,shd->hts", q, ks)) * torch.exp(_segsum(adt))
        out = torch.einsum("hts,shd->thd", qk, V[i])
        out = out + torch.einsum("hDd,thd,ht->thD", acc, q, torch.exp(torch.cumsum(adt, -1)))
        if D is not None:
            out = out + D[None, :, None] * V[i]
        out = out - V[i] * qk_dot[..., None]
        if Z is not None:
            out = out * Z[i] * torch.sigmoid(Z[i])
        outs.append(out)
        rev = torch.exp(adt.sum(-1, keepdim=True) - torch.cumsum(adt, -1))
        final = acc * torch.exp(adt.sum(-1))[:, None, None] + torch.einsum(
            "thd,thD->hDd", ks, V[i] * rev.transpose(0, 1)[..., None])
        finals.append((ang[-1], final, k[-1], V[i][-1]))
    return torch.stack(outs), tuple(torch.stack(f) for f in zip(*finals))


@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_matches_mamba_ssm_quadratic_reference(backend, states):
    ins = _inputs(l=17, hq=1, h=4, n=8, a=2, states=states)
    with torch.no_grad():
        y, *fin = mamba3_siso(**ins, return_final_states=True, backend=backend, chunk_size=4)
        yr, fr = _mamba_fwd_ref(*(ins[k] for k in ("Q", "K", "V", "ADT", "DT", "Trap",
                                                  "Q_bias", "K_bias", "Angles", "D", "Z",
                                                  "Input_States")))
    assert_close(yr, y, 1e-10, "out")
    for name, a, b in zip(STATE_NAMES, fr, fin):
        assert_close(a, b, 1e-10, f"{name} state")


# ---------------------------------------------------------------- validation
def test_bad_inputs_name_the_argument():
    ins = _inputs(states=False)
    with torch.no_grad():
        with pytest.raises(ValueError, match="multiple of the Q/K heads"):
            mamba3_siso(**{**ins, "Q": ins["Q"].repeat(1, 1, 3, 1),
                           "K": ins["K"].repeat(1, 1, 3, 1)})
        with pytest.raises(ValueError, match="ADT must have shape"):
            mamba3_siso(**{**ins, "ADT": ins["ADT"].transpose(1, 2)})
        with pytest.raises(ValueError, match="Angles has a = 5"):
            mamba3_siso(**{**ins, "Angles": torch.zeros(2, 21, 4, 5, dtype=torch.float64)})
        with pytest.raises(ValueError, match="DT contains NaN"):
            bad = ins["DT"].detach().clone()
            bad[0, 0, 3] = float("nan")
            mamba3_siso(**{**ins, "DT": bad})
        with pytest.raises(TypeError, match="Input_States must be a 4-tuple"):
            mamba3_siso(**{**ins, "Input_States": (torch.zeros(2, 4, 2),)})
        with pytest.raises(ValueError, match="at least one token"):
            one = {k: (v[:1] if k not in ("Q_bias", "K_bias", "D") and v is not None else v)
                   for k, v in ins.items()}
            mamba3_siso(**one, cu_seqlens=torch.tensor([0, 0, 21], dtype=torch.int32))
        with pytest.raises(ValueError, match="chunk_size"):
            mamba3_siso(**ins, chunk_size=0)
        with pytest.raises(ValueError, match="backend"):
            mamba3_siso(**ins, backend="nope")


# ---------------------------------------------------------------- the cpu backend's C++ kernel
def test_cpu_backend_runs_the_fused_kernel():
    """The cpu backend's graph is one autograd node, the custom op around
    csrc/cpu/mamba3_siso.cpp and ssd.cpp (not the torch ops of chunked.py)."""
    ins = _inputs(l=5)
    y = mamba3_siso(**ins, backend="cpu")
    assert "hjseq_mamba3_siso_cpu_fwd" in type(y.grad_fn).__name__


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend unavailable")
def test_cpu_keeps_the_scan_matrices_only_for_training(monkeypatch):
    """Inference runs ssd's plain forward; with a gradient wanted the forward keeps every
    chunk's q̃ k̃ᵀ for ssd's backward, and the gradients equal the sequential reference's."""
    import types

    from hjseq.ops.mamba3_siso import cpu as m3_cpu

    ext, calls = m3_cpu._ssd_ext(), []
    spy = types.SimpleNamespace(
        forward=lambda *a: calls.append("forward") or ext.forward(*a),
        forward_keep_cb=lambda *a: calls.append("keep_cb") or ext.forward_keep_cb(*a),
        backward=lambda *a: calls.append(f"backward cb={a[-1] is not None}") or ext.backward(*a))
    monkeypatch.setattr(m3_cpu, "_ssd_ext", lambda: spy)
    with torch.no_grad():
        mamba3_siso(**_inputs(l=21), chunk_size=8, backend="cpu")
    assert calls == ["forward"]
    grads = []
    for backend in ("cpu", "ref"):
        ins = _inputs(l=21)
        mamba3_siso(**ins, chunk_size=8, backend=backend).square().sum().backward()
        grads.append([t.grad for t in _leaves(ins)])
    assert calls[1:] == ["keep_cb", "backward cb=True"]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend unavailable")
def test_cpu_gradients_outlive_the_next_backward():
    """The kernels' large tensors come from a block cache that hands a block out again once
    its tensor is freed: the gradients of one backward must survive the next."""
    first = _inputs(l=21, seed=1)
    mamba3_siso(**first, chunk_size=8, backend="cpu").square().sum().backward()
    got = [t.grad.clone() for t in _leaves(first)]
    second = _inputs(l=21, seed=2)
    mamba3_siso(**second, chunk_size=8, backend="cpu").square().sum().backward()
    for before, t in zip(got, _leaves(first)):
        assert torch.equal(before, t.grad)
    ref = _inputs(l=21, seed=1)
    mamba3_siso(**ref, chunk_size=8, backend="ref").square().sum().backward()
    for g, t in zip(got, _leaves(ref)):
        torch.testing.assert_close(g, t.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.no_nan_fill
@pytest.mark.parametrize("varlen", [False, True])
def test_cpu_torch_compile_fullgraph(varlen):
    """The custom ops trace under torch.compile(fullgraph=True): outputs, final states and
    gradients as the reference (float32), with input states, GQA and packed sequences."""
    b, cu = (1, torch.tensor([0, 6, 13], dtype=torch.int32)) if varlen else (2, None)
    ins = _inputs(b=b, l=13, nseq=2, hq=2, h=4, dtype=torch.float32)
    f = torch.compile(lambda: mamba3_siso(**ins, chunk_size=4, return_final_states=True,
                                          cu_seqlens=cu, backend="cpu"), fullgraph=True)
    res = list(f())
    got = res + grads_of(res, _leaves(ins))
    want = _run("ref", ins, chunk=4, cu=cu)
    for name, r, o in zip(_names(ins), want, got):
        assert_close(r, o, 1e-4, f"compiled {name}")


@pytest.mark.parametrize("D,Z", [(True, False), (False, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_one_of_D_and_Z(D, Z, dtype):
    """D without Z and Z without D; full rotary (a = n/2); GQA."""
    ins = _inputs(l=11, hq=2, h=4, n=8, a=4, D=D, Z=Z, dtype=dtype)
    for name, r, o in zip(_names(ins), _run("ref", ins), _run("cpu", ins, chunk=4)):
        tol = (RTOL if name in ("out", "ssm_state") else GRAD_RTOL)[dtype]
        assert_close(r, o, tol, f"{dtype} {name}")


@pytest.mark.parametrize("which", ["out", "states"])
def test_cpu_gradients_of_part_of_the_outputs(which):
    """Gradients when only the output (the final states get no gradient) or only the final
    states (the output gets none) enter the loss."""
    ins = _inputs(l=10, hq=1, h=2)
    leaves = _leaves(ins)
    res = {b: mamba3_siso(**ins, chunk_size=4, return_final_states=True, backend=b)
           for b in ("ref", "cpu")}
    for b in res:
        res[b] = [res[b][0]] if which == "out" else list(res[b][1:])
    gen = torch.Generator().manual_seed(0)
    cot = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in res["ref"]]
    g = {b: torch.autograd.grad(sum((o.double() * c).sum() for o, c in zip(res[b], cot)),
                                leaves, allow_unused=True) for b in res}
    for i, (r, o) in enumerate(zip(g["ref"], g["cpu"])):
        if r is None:  # e.g. Z and D do not reach the final states
            assert o is None or not o.any(), f"{which}: grad {i} should be zero"
        else:
            assert_close(r, o, 1e-10, f"{which}: grad {i}")


def test_cpu_resets_and_saturated_trap():
    """ADT = −inf (a full reset, α = 0) and Trap = ±inf (λ = 1 or 0) at some tokens."""
    ins = _inputs(l=13, hq=2, h=4)
    with torch.no_grad():
        ins["ADT"][0, 1, 5] = float("-inf")
        ins["ADT"][1, 3, 0] = float("-inf")
        ins["Trap"][0, 0, 3] = float("inf")
        ins["Trap"][1, 2, 12] = float("-inf")
        ins["Trap"][1, 1, 7] = float("inf")
    for name, r, o in zip(_names(ins), _run("ref", ins), _run("cpu", ins, chunk=4)):
        assert_close(r, o, 1e-10, name)


def test_cpu_float32_many_turns():
    """Large steps: the angles wrap around 2π many times (the kernel's float sin/cos and its
    mod 2π) and still match the definition to float32 round-off."""
    ins = _inputs(l=40, dtype=torch.float32, states=True)
    with torch.no_grad():
        ins["DT"].mul_(20.0)
        ins["ADT"].mul_(0.05)
    ref, out = _run("ref", ins), _run("cpu", ins, chunk=16)
    for name, r, o in zip(_names(ins), ref, out):
        tol = (RTOL if name in ("out", "ssm_state") else GRAD_RTOL)[torch.float32]
        assert_close(r, o, tol, name)


def test_cpu_float16_inputs():
    """float16 inputs are computed in float32 (the gradients come back in float16)."""
    ins = _inputs(l=9, hq=2, h=4, dtype=torch.float16)
    ref, out = _run("ref", ins), _run("cpu", ins, chunk=4)
    assert out[0].dtype == torch.float16 and out[1].dtype == torch.float32
    for name, r, o in zip(_names(ins), ref, out):
        assert o.dtype == r.dtype, name
        tol = (RTOL if name in ("out", "ssm_state") else GRAD_RTOL)[torch.float16]
        assert_close(r, o, tol, name)


def test_cpu_varlen_float32_gqa():
    ins = _inputs(b=1, l=70, nseq=3, hq=2, h=4, n=16, p=8, a=5, dtype=torch.float32)
    cu = torch.tensor([0, 33, 34, 70], dtype=torch.int64)
    ref, out = _run("ref", ins, chunk=16, cu=cu), _run("cpu", ins, chunk=16, cu=cu)
    for name, r, o in zip(_names(ins), ref, out):
        tol = (RTOL if name in ("out", "ssm_state") else GRAD_RTOL)[torch.float32]
        assert_close(r, o, tol, name)


def test_cpu_kernel_rejects_bad_input():
    """The C++ entry points check dtypes, layouts and shapes (mamba3_siso validates first, so
    these guard direct calls)."""
    from hjseq.ops.mamba3_siso.cpu import _ext

    ins = {k: v.detach() for k, v in _inputs(states=False).items() if k != "Input_States"}
    args = [ins[k] for k in ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias",
                             "Angles", "D")]
    tail = [None, None, None, None, torch.tensor([0, 21]), False]
    ext = _ext()
    ext.prep_forward(*args, *tail)  # the good call
    bad = list(args)
    bad[1] = bad[1].float()
    with pytest.raises(RuntimeError, match="K is Float but Q is Double"):
        ext.prep_forward(*bad, *tail)
    bad = list(args)
    bad[2] = bad[2].transpose(1, 2)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.prep_forward(*bad, *tail)
    bad = list(args)
    bad[6] = bad[6][:, :6].contiguous()
    with pytest.raises(RuntimeError, match="Q_bias has shape"):
        ext.prep_forward(*bad, *tail)
    with pytest.raises(RuntimeError, match="int64"):
        ext.prep_forward(*args, None, None, None, None, torch.tensor([0, 21], dtype=torch.int32),
                         False)
    with pytest.raises(RuntimeError, match="all four input states or none"):
        ext.prep_forward(*args, None, torch.zeros(2, 4, 4, 8, dtype=torch.float64), None,
                         None, torch.tensor([0, 21]), False)
    with pytest.raises(RuntimeError, match="every sequence needs >= 1 token"):
        one = [x[:1] if x.dim() == 4 or x.shape[0] == 2 else x for x in args]
        ext.prep_forward(*one, None, None, None, None, torch.tensor([0, 7, 7, 21]), True)
