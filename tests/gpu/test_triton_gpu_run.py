"""The Triton checks the first GPU run needs (benchmarks/gpu_check.py runs this file):
large state sizes N = 64/128/256, fp16 inputs, packed batches of many sequences, and the
float64 comparisons at 1e-10. On CUDA they run at GPU sizes; under the CPU interpreter the
same tests run at small sizes."""
from __future__ import annotations

import pytest
import torch

from _gpu_testutil import (DEVICE, HAS_CUDA, leaf, max_err, ref_backend, rel_rms,
                           run_with_grads, triton_backend)

SS_GRADS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
# (batch, dim, L): GPU sizes span many 32-step tiles; the interpreter (whose scans loop
# in Python over every element) two 64-step tiles, one at N = 256
SS_SIZE = (2, 64, 1100) if HAS_CUDA else (1, 2, 70)


def _ss_size(N: int) -> tuple[int, int, int]:
    return SS_SIZE if HAS_CUDA or N < 64 else (1, 1, 70 if N <= 128 else 40)


def _ss_inputs(batch, dim, L, N, dtype, n_seq=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return leaf((torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(DEVICE, dtype))

    return dict(u=r(batch, dim, L), delta=r(batch, dim, L, scale=0.5),
                A=leaf((-torch.rand(dim, N, generator=g, dtype=torch.float64) * 2 - 0.1)
                       .to(DEVICE, dtype)),
                B=r(batch, N, L), C=r(batch, N, L), D=r(dim), z=r(batch, dim, L),
                delta_bias=r(dim, scale=0.3), initial_state=r(n_seq or batch, dim, N),
                delta_softplus=True, return_final_state=True)


def _compare_ss(x, scheme, cu=None, truth_inputs=None):
    names = [n for n in SS_GRADS if n in x]
    ref = run_with_grads(lambda **k: ref_backend("selective_scan")(**k, scheme=scheme,
                                                                   cu_seqlens=cu),
                         truth_inputs or x, names)
    got = run_with_grads(lambda **k: triton_backend("selective_scan")(**k, scheme=scheme,
                                                                      cu_seqlens=cu), x, names)
    return list(zip(["y", "final", *names], got, ref))


@pytest.mark.parametrize("N", [64, 128, 256])
def test_selective_scan_large_state_float64(N):
    """float64 to 1e-10 relative to the largest value, zoh, every feature on."""
    for name, t, r in _compare_ss(_ss_inputs(*_ss_size(N), N, torch.float64), "zoh"):
        assert max_err(t, r) < 1e-10 * max(1.0, r.abs().max().item()), (N, name, max_err(t, r))


@pytest.mark.parametrize("N", [64, 128])
def test_selective_scan_large_state_float32(N):
    x = _ss_inputs(*_ss_size(N), N, torch.float32)
    x64 = {k: leaf(v.double()) if torch.is_tensor(v) else v for k, v in x.items()}
    for name, t, r in _compare_ss(x, "euler_b", truth_inputs=x64):
        assert rel_rms(t, r) < 5e-5, (N, name, rel_rms(t, r))


def test_selective_scan_float16():
    x = _ss_inputs(*SS_SIZE, 16, torch.float16)
    x64 = {k: leaf(v.double()) if torch.is_tensor(v) else v for k, v in x.items()}
    res = _compare_ss(x, "zoh", truth_inputs=x64)
    assert res[0][1].dtype == torch.float16 and res[1][1].dtype == torch.float32
    for name, t, r in res:
        # fp16 outputs and gradients carry 11 bits of mantissa: ~5e-4 per element
        assert rel_rms(t, r) < 5e-3, (name, rel_rms(t, r))


def _many_sequences(total: int, n_seq: int, seed: int) -> torch.Tensor:
    """cu_seqlens of n_seq sequences (some empty, some of length 1) packing `total` steps."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randint(0, total + 1, (n_seq - 1,), generator=g)).values
    cuts[: n_seq // 5] = cuts[0]  # a run of empty sequences
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([total])])
    return cu.to(DEVICE, torch.int32)


def test_varlen_many_sequences_float64():
    total, n_seq = (6000, 300) if HAS_CUDA else (90, 12)
    cu = _many_sequences(total, n_seq, 0)
    dim = 32 if HAS_CUDA else 1
    x = _ss_inputs(1, dim, total, 16 if HAS_CUDA else 4, torch.float64, n_seq=n_seq)
    for name, t, r in _compare_ss(x, "zoh", cu):
        assert max_err(t, r) < 1e-10 * max(1.0, r.abs().max().item()), (name, max_err(t, r))

    g = torch.Generator().manual_seed(1)
    a = leaf((torch.rand(1, dim, total, generator=g, dtype=torch.float64) * 1.9 + 0.05).to(DEVICE))
    b = leaf(torch.randn(1, dim, total, generator=g, dtype=torch.float64).to(DEVICE))
    h0 = leaf(torch.randn(n_seq, dim, generator=g, dtype=torch.float64).to(DEVICE))
    lin = dict(a=a, b=b, initial_state=h0, return_final_state=True)
    names = ["a", "b", "initial_state"]
    ref = run_with_grads(lambda **k: ref_backend("linear_scan")(**k, cu_seqlens=cu), lin, names)
    got = run_with_grads(lambda **k: triton_backend("linear_scan")(**k, cu_seqlens=cu), lin,
                         names)
    for name, t, r in zip(["h", "final", *names], got, ref):
        # a up to 1.95 over long sequences: compare relative to the largest value
        assert max_err(t, r) < 1e-10 * max(1.0, r.abs().max().item()), (name, max_err(t, r))

    W = 4
    conv = dict(x=leaf(torch.randn(1, dim, total, generator=g, dtype=torch.float64).to(DEVICE)),
                weight=leaf(torch.randn(dim, W, generator=g, dtype=torch.float64).to(DEVICE)),
                bias=leaf(torch.randn(dim, generator=g, dtype=torch.float64).to(DEVICE)),
                initial_state=leaf(torch.randn(n_seq, dim, W - 1, generator=g,
                                               dtype=torch.float64).to(DEVICE)),
                return_final_state=True)
    names = ["x", "weight", "bias", "initial_state"]
    ref = run_with_grads(lambda **k: ref_backend("causal_conv1d")(**k, activation="silu",
                                                                   cu_seqlens=cu), conv, names)
    got = run_with_grads(lambda **k: triton_backend("causal_conv1d")(**k, activation="silu",
                                                                      cu_seqlens=cu), conv, names)
    for name, t, r in zip(["y", "final", *names], got, ref):
        assert max_err(t, r) < 1e-10 * max(1.0, r.abs().max().item()), (name, max_err(t, r))


def test_linear_scan_and_conv_float16():
    g = torch.Generator().manual_seed(2)
    bsz, dim, L = (2, 128, 3000) if HAS_CUDA else (1, 3, 150)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    cases = {
        "linear_scan": (dict(a=torch.rand(bsz, dim, L, generator=g, dtype=torch.float64) * 0.5
                             + 0.5, b=r(bsz, dim, L), initial_state=r(bsz, dim)), {}),
        "causal_conv1d": (dict(x=r(bsz, dim, L), weight=r(dim, 4), bias=r(dim),
                               initial_state=r(bsz, dim, 3)), dict(activation="silu")),
    }
    for op, (vals, kw) in cases.items():
        x16 = {k: leaf(v.to(DEVICE, torch.float16)) for k, v in vals.items()}
        x64 = {k: leaf(v.to(torch.float16).to(DEVICE, torch.float64)) for k, v in vals.items()}
        names = list(vals)
        truth = run_with_grads(lambda **k: ref_backend(op)(**k, **kw, return_final_state=True),
                               x64, names)
        got = run_with_grads(lambda **k: triton_backend(op)(**k, **kw, return_final_state=True),
                             x16, names)
        assert got[0].dtype == torch.float16
        for name, t, ref in zip(["y", "final", *names], got, truth):
            assert rel_rms(t, ref) < 5e-3, (op, name, rel_rms(t, ref))
