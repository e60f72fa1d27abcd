"""Real-GPU checks (marked ``gpu``, skipped without CUDA): the Triton, CUDA and mamba
backends at larger shapes, in fp32 and bf16, against the reference. These are extra: the
interpreter tests and the nvcc compile checks are what run everywhere."""
from __future__ import annotations

import importlib

import pytest
import torch

from _gpu_testutil import leaf, rel_rms
from hjseq.ops._registry import BackendUnavailable

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GRADS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def _load(op, backend):
    try:
        return importlib.import_module(f"hjseq.ops.{op}.{backend}").load()
    except BackendUnavailable as e:
        pytest.skip(f"{op} backend {backend!r} unavailable here: {e}")


def _ssm(dtype, batch=2, dim=64, L=700, N=16, groups=None, h0=True):
    g = torch.Generator().manual_seed(0)

    def r(*s, scale=1.0):
        return leaf((torch.randn(*s, generator=g) * scale).cuda().to(dtype))

    bc = (batch, N, L) if groups is None else (batch, groups, N, L)
    x = dict(u=r(batch, dim, L), delta=r(batch, dim, L, scale=0.5),
             A=leaf(-torch.rand(dim, N, generator=g).cuda() - 0.1), B=r(*bc), C=r(*bc),
             D=leaf(torch.randn(dim, generator=g).cuda()), z=r(batch, dim, L),
             delta_bias=leaf(torch.randn(dim, generator=g).cuda() * 0.3), delta_softplus=True)
    if h0:
        x["initial_state"] = leaf(torch.randn(batch, dim, N, generator=g).cuda())
    return x


def _grads(fn, x, names):
    y = fn(**x)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).cuda()
    return [y, *torch.autograd.grad((y.float() * gy).sum(), [x[n] for n in names])]


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
def test_selective_scan_gpu(backend, dtype, tol, scheme):
    fn = _load("selective_scan", backend)
    x = _ssm(dtype, groups=4, L=2100)  # L > two CUDA chunks of 1024
    names = GRADS + ["initial_state"]
    x64 = {k: leaf(v.double()) if torch.is_tensor(v) else v for k, v in x.items()}
    ref = importlib.import_module("hjseq.ops.selective_scan.ref").load()
    truth = _grads(lambda **k: ref(**k, scheme=scheme), x64, names)
    got = _grads(lambda **k: fn(**k, scheme=scheme), x, names)
    for name, t, r in zip(["y", *names], got, truth):
        assert rel_rms(t, r) < tol, (backend, name, rel_rms(t, r))


def test_selective_scan_mamba_gpu():
    fn = _load("selective_scan", "mamba")
    x = _ssm(torch.bfloat16, h0=False)
    ref = importlib.import_module("hjseq.ops.selective_scan.ref").load()
    x64 = {k: leaf(v.double()) if torch.is_tensor(v) else v for k, v in x.items()}
    for name, t, r in zip(["y", *GRADS], _grads(fn, x, GRADS), _grads(ref, x64, GRADS)):
        assert rel_rms(t, r) < 3e-2, (name, rel_rms(t, r))


@pytest.mark.parametrize("backend", ["triton", "mamba"])
def test_causal_conv1d_gpu(backend):
    fn = _load("causal_conv1d", backend)
    g = torch.Generator().manual_seed(0)
    x = leaf(torch.randn(4, 256, 3000, generator=g).cuda().bfloat16())
    w, b = leaf(torch.randn(256, 4, generator=g).cuda()), leaf(torch.randn(256, generator=g).cuda())
    ref = importlib.import_module("hjseq.ops.causal_conv1d.ref").load()
    got = _grads(lambda **k: fn(**k, activation="silu"), dict(x=x, weight=w, bias=b),
                 ["x", "weight", "bias"])
    x64 = dict(x=leaf(x.double()), weight=leaf(w.double()), bias=leaf(b.double()))
    truth = _grads(lambda **k: ref(**k, activation="silu"), x64, ["x", "weight", "bias"])
    for t, r in zip(got, truth):
        assert rel_rms(t, r) < 2e-2


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_linear_scan_gpu(backend):
    fn = _load("linear_scan", backend)
    g = torch.Generator().manual_seed(0)
    a = leaf((torch.rand(2, 128, 5000, generator=g) * 0.5 + 0.5).cuda())
    b = leaf(torch.randn(2, 128, 5000, generator=g).cuda())
    ref = importlib.import_module("hjseq.ops.linear_scan.ref").load()
    got = _grads(fn, dict(a=a, b=b), ["a", "b"])
    truth = _grads(ref, dict(a=leaf(a.double()), b=leaf(b.double())), ["a", "b"])
    for t, r in zip(got, truth):
        assert rel_rms(t, r) < 1e-4


@pytest.mark.parametrize("backend", ["triton", "mamba"])
def test_selective_state_update_gpu(backend):
    fn = _load("selective_state_update", backend)
    g = torch.Generator().manual_seed(0)
    b, d, n, G = 8, 512, 16, 4
    state = torch.randn(b, d, n, generator=g).cuda()
    x, dt, z = (torch.randn(b, d, generator=g).cuda().bfloat16() for _ in range(3))
    B, C = (torch.randn(b, G, n, generator=g).cuda().bfloat16() for _ in range(2))
    A = -torch.rand(d, n, generator=g).cuda()
    D, bias = torch.randn(d, generator=g).cuda(), torch.randn(d, generator=g).cuda()
    ref = importlib.import_module("hjseq.ops.selective_state_update.ref").load()
    out, new = fn(state, x, dt, A, B, C, D, z, bias, True)
    ref_out, ref_new = ref(state, x, dt, A, B, C, D, z, bias, True)
    assert rel_rms(new, ref_new) < 1e-5 and rel_rms(out, ref_out) < 1e-2
