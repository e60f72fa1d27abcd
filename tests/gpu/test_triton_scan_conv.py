"""Triton linear_scan and causal_conv1d vs their references (outputs and gradients), under
TRITON_INTERPRET=1 on the CPU (or on CUDA where present)."""
from __future__ import annotations

import pytest
import torch

from _gpu_testutil import (DEVICE, leaf, max_err, ref_backend, rel_rms, run_with_grads,
                           triton_backend)


def lin_inputs(batch, dim, L, n_seq=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, dim, L, generator=g, dtype=torch.float64) * 0.5 + 0.5
    b = torch.randn(batch, dim, L, generator=g, dtype=torch.float64)
    h0 = torch.randn(n_seq or batch, dim, generator=g, dtype=torch.float64)
    return dict(a=leaf(a.to(DEVICE, dtype)), b=leaf(b.to(DEVICE, dtype)),
                initial_state=leaf(h0.to(DEVICE, dtype)), return_final_state=True)


@pytest.mark.parametrize("batch,dim,L,cu", [
    (2, 5, 150, None),                 # three tiles, D not a power of 2
    (1, 3, 90, [0, 4, 4, 70, 90]),     # packed, with an empty sequence
])
def test_linear_scan_float64(batch, dim, L, cu):
    cu_t = None if cu is None else torch.tensor(cu, device=DEVICE)
    x = lin_inputs(batch, dim, L, n_seq=None if cu is None else len(cu) - 1)
    names = ["a", "b", "initial_state"]
    ref = run_with_grads(lambda **k: ref_backend("linear_scan")(**k, cu_seqlens=cu_t), x, names)
    got = run_with_grads(lambda **k: triton_backend("linear_scan")(**k, cu_seqlens=cu_t), x,
                         names)
    for name, t, r in zip(["h", "final", *names], got, ref):
        assert max_err(t, r) < 1e-11, (name, max_err(t, r))


def test_linear_scan_bf16_accumulates_in_fp32():
    x = lin_inputs(2, 4, 100, dtype=torch.bfloat16)
    x64 = {k: leaf(v.double()) if torch.is_tensor(v) else v for k, v in x.items()}
    names = ["a", "b", "initial_state"]
    truth = run_with_grads(ref_backend("linear_scan"), x64, names)
    got = run_with_grads(triton_backend("linear_scan"), x, names)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    for name, t, r in zip(["h", "final", *names], got, truth):
        assert rel_rms(t, r) < 1e-2, (name, rel_rms(t, r))


def conv_inputs(batch, dim, L, W, n_seq=None, dtype=torch.float64, bias=True, h0=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return leaf(torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE, dtype))

    return dict(x=r(batch, dim, L), weight=r(dim, W), bias=r(dim) if bias else None,
                initial_state=r(n_seq or batch, dim, W - 1) if h0 else None,
                return_final_state=True)


@pytest.mark.parametrize("batch,dim,L,W,act,cu,h0", [
    (2, 5, 100, 4, "silu", None, True),         # two tiles, history from initial_state
    (1, 3, 20, 2, None, None, False),           # no history, no activation
    (1, 4, 60, 4, "silu", [0, 2, 9, 50, 60], True),  # packed; a sequence shorter than W-1
])
def test_causal_conv1d_float64(batch, dim, L, W, act, cu, h0):
    cu_t = None if cu is None else torch.tensor(cu, device=DEVICE)
    x = conv_inputs(batch, dim, L, W, n_seq=None if cu is None else len(cu) - 1, h0=h0)
    names = [n for n in ("x", "weight", "bias", "initial_state") if x[n] is not None]
    ref = run_with_grads(lambda **k: ref_backend("causal_conv1d")(**k, activation=act,
                                                                   cu_seqlens=cu_t), x, names)
    got = run_with_grads(lambda **k: triton_backend("causal_conv1d")(**k, activation=act,
                                                                      cu_seqlens=cu_t), x, names)
    for name, t, r in zip(["y", "final", *names], got, ref):
        assert t.shape == r.shape, name
        assert max_err(t, r) < 1e-11, (name, max_err(t, r))


def test_causal_conv1d_bf16():
    x = conv_inputs(2, 4, 50, 4, dtype=torch.bfloat16)
    x64 = {k: leaf(v.double()) if torch.is_tensor(v) else v for k, v in x.items()}
    names = ["x", "weight", "bias", "initial_state"]
    truth = run_with_grads(lambda **k: ref_backend("causal_conv1d")(**k, activation="silu"),
                           x64, names)
    got = run_with_grads(lambda **k: triton_backend("causal_conv1d")(**k, activation="silu"),
                         x, names)
    assert got[0].dtype == torch.bfloat16
    for name, t, r in zip(["y", "final", *names], got, truth):
        assert rel_rms(t, r) < 1e-2, (name, rel_rms(t, r))


def test_bad_inputs_name_the_argument():
    conv = triton_backend("causal_conv1d")
    x = torch.zeros(1, 3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="weight must have shape"):
        conv(x, torch.zeros(4, 3, device=DEVICE))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        conv(x, torch.zeros(3, 4, device=DEVICE), initial_state=torch.zeros(1, 3, 2, device=DEVICE))
    lin = triton_backend("linear_scan")
    with pytest.raises(ValueError, match="a must have shape"):
        lin(torch.zeros(1, 3, 8, device=DEVICE), torch.zeros(1, 3, 7, device=DEVICE))


@pytest.mark.parametrize("W,bias,act", [(4, True, "silu"), (1, False, "silu"), (3, True, None)])
def test_causal_conv1d_backward_is_fused(monkeypatch, W, bias, act):
    """The backward recomputes pre and SiLU inside its kernel: no forward launch (the old
    path ran one into an fp32 buffer), and the same gradients as the reference."""
    mod = pytest.importorskip("hjseq.ops.causal_conv1d.triton")
    triton_backend("causal_conv1d")
    launches = []

    class Spy:
        def __init__(self, k):
            self.k = k

        def __getitem__(self, grid):
            launches.append(grid)
            return self.k[grid]

    x = conv_inputs(2, 3, 70, W, bias=bias, h0=W > 1)
    y, fin = mod.causal_conv1d_triton(**x, activation=act)
    monkeypatch.setattr(mod, "_conv_fwd_kernel", Spy(mod._conv_fwd_kernel))
    names = [n for n in ("x", "weight", "bias", "initial_state") if x[n] is not None]
    got = torch.autograd.grad(y.sum() + fin.sum(), [x[n] for n in names])
    assert launches == []
    y_r, fin_r = ref_backend("causal_conv1d")(**x, activation=act)
    want = torch.autograd.grad(y_r.sum() + fin_r.sum(), [x[n] for n in names])
    for name, t, r in zip(names, got, want):
        assert max_err(t, r) < 1e-11, (name, max_err(t, r))
