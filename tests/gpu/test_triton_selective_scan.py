"""Triton selective_scan vs the reference (ref.py), outputs and gradients, run under
TRITON_INTERPRET=1 on the CPU (or on CUDA where present). Shapes are tiny: the interpreter
executes every tile op in numpy."""
from __future__ import annotations

import pytest
import torch

from _gpu_testutil import (DEVICE, HAS_CUDA, leaf, max_err, ref_backend, rel_rms,
                           run_with_grads, triton_backend)

OP = "selective_scan"
GRADS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def make_inputs(batch=2, dim=4, L=70, N=4, groups=None, dtype=torch.float64, n_seq=None,
                full=True, seed=0):
    """Random selective-scan inputs (A < 0, Δ moderate) on DEVICE, as leaves."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEVICE, dtype)

    bc = (batch, N, L) if groups is None else (batch, groups, N, L)
    # without softplus Δ must be positive, as a step size is (else exp(ΔA) > 1 blows up)
    delta = r(batch, dim, L, scale=0.5) if full else r(batch, dim, L, scale=0.5).abs()
    x = dict(u=r(batch, dim, L), delta=delta,
             A=(-torch.rand(dim, N, generator=g, dtype=torch.float64) * 2 - 0.1).to(DEVICE, dtype),
             B=r(*bc), C=r(*bc))
    if full:
        x.update(D=r(dim), z=r(batch, dim, L), delta_bias=r(dim, scale=0.3),
                 initial_state=r(n_seq or batch, dim, N))
    x = {k: leaf(v) for k, v in x.items()}
    x.update(delta_softplus=full, return_final_state=True)
    return x


def compare(inputs, scheme="euler_b", cu_seqlens=None):
    names = [n for n in GRADS if n in inputs]
    out = []
    for fn in (ref_backend(OP), triton_backend(OP)):
        out.append(run_with_grads(lambda **kw: fn(**kw, scheme=scheme, cu_seqlens=cu_seqlens),
                                  inputs, names))
    return dict(zip(["y", "final", *names], zip(*out)))


@pytest.mark.parametrize("scheme,groups,batch", [("euler_b", 2, 1), ("zoh", None, 2)])
def test_all_features_float64(scheme, groups, batch):
    # L = 70 spans two 64-step tiles, so the carried state and co-state are exercised
    res = compare(make_inputs(batch=batch, groups=groups), scheme)
    for name, (r, t) in res.items():
        assert max_err(t, r) < 1e-10, (name, max_err(t, r))


def test_minimal_call_float64():
    x = make_inputs(batch=1, dim=3, L=130, N=3, full=False)  # three tiles, N not a power of 2
    res = compare(x)
    for name, (r, t) in res.items():
        assert max_err(t, r) < 1e-10, (name, max_err(t, r))


def test_varlen_float64():
    cu = torch.tensor([0, 9, 9, 75, 80], dtype=torch.int32, device=DEVICE)  # an empty one too
    x = make_inputs(batch=1, L=80, n_seq=4)
    res = compare(x, "zoh", cu)
    for name, (r, t) in res.items():
        assert max_err(t, r) < 1e-10, (name, max_err(t, r))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_matches_float64_truth(dtype, tol):
    """fp32/bf16 inputs, fp32 accumulation: compare with the float64 reference of the same
    (rounded) inputs."""
    x = make_inputs(dtype=dtype, L=40)
    x64 = {k: (leaf(v.double()) if torch.is_tensor(v) else v) for k, v in x.items()}
    names = [n for n in GRADS if n in x]
    truth = run_with_grads(ref_backend(OP), x64, names)
    got = run_with_grads(triton_backend(OP), x, names)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    for name, t, r in zip(["y", "final", *names], got, truth):
        # bf16 outputs/grads are rounded to 8 bits of mantissa: ~4e-3 per element
        assert rel_rms(t, r) < tol, (name, rel_rms(t, r))


def test_zoh_gradient_at_A_zero_is_the_derivative():
    """With A = 0 the zoh step is B̄ = Δ B (the limit); its A-derivative is Δ²/2 B, which the
    kernel's series gives. Checked against a central difference of the reference."""
    x = make_inputs(batch=1, dim=2, L=20, N=2, full=False)
    A = x["A"].detach().clone()
    A[0, 0] = 0.0
    x["A"] = leaf(A)
    ref, tri = ref_backend(OP), triton_backend(OP)
    y_t = tri(**x, scheme="zoh")[0]
    assert max_err(y_t, ref(**x, scheme="zoh")[0]) < 1e-12
    (dA,) = torch.autograd.grad(y_t.sum(), x["A"])
    eps = 1e-6
    plain = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in x.items()}

    def f(a00):
        A2 = A.clone()
        A2[0, 0] = a00
        return ref(**{**plain, "A": A2}, scheme="zoh")[0].sum()

    fd = (f(eps) - f(-eps)) / (2 * eps)
    assert abs(dA[0, 0].item() - fd.item()) < 1e-6 * max(1.0, abs(fd.item()))


def test_dispatch_by_name_and_bad_input():
    from hjseq.ops import selective_scan
    x = make_inputs(batch=1, dim=2, L=8, N=2, full=False)
    kw = {k: v.detach() if torch.is_tensor(v) else v for k, v in x.items()}
    triton_backend(OP)  # skips if triton is missing
    y, h = selective_scan(**kw, backend="triton")
    y_ref, h_ref = selective_scan(**kw, backend="ref")
    assert max_err(y, y_ref) < 1e-12 and max_err(h, h_ref) < 1e-12
    bad = dict(kw, A=torch.zeros(3, 2, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="A must have shape"):
        triton_backend(OP)(**bad)
    with pytest.raises(ValueError, match="initial_state"):
        triton_backend(OP)(**dict(kw, initial_state=torch.zeros(2, 2, 2, dtype=torch.float64,
                                                                device=DEVICE)))


def test_strided_views_as_mamba_passes_them():
    """Mamba hands the scan strided views: B, C sliced out of x_proj's output and u, z
    halves of in_proj's (B, L, 2D) output transposed. The kernels read strides, no copies."""
    g = torch.Generator().manual_seed(0)
    b, d, L, n = 2, 4, 20, 3
    x_dbl = leaf(torch.randn(b * L, 2 * n + 1, generator=g, dtype=torch.float64).to(DEVICE))
    xz = leaf(torch.randn(b, L, 2 * d, generator=g, dtype=torch.float64).to(DEVICE))
    delta = leaf(torch.rand(b, d, L, generator=g, dtype=torch.float64).to(DEVICE))
    A = leaf(-torch.rand(d, n, generator=g, dtype=torch.float64).to(DEVICE))

    def run(fn):
        B = x_dbl[:, 1:1 + n].reshape(b, L, n).permute(0, 2, 1)
        C = x_dbl[:, 1 + n:].reshape(b, L, n).permute(0, 2, 1)
        u, z = xz.transpose(1, 2)[:, :d], xz.transpose(1, 2)[:, d:]
        assert not (B.is_contiguous() or u.is_contiguous())
        y = fn(u, delta, A, B, C, None, z)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=DEVICE).reshape(y.shape)
        return [y, *torch.autograd.grad((y * w).sum(), [x_dbl, xz, delta, A])]

    for r, t in zip(run(ref_backend(OP)), run(triton_backend(OP))):
        assert max_err(t, r) < 1e-12


def test_empty_sequence_axis():
    fn = triton_backend(OP)
    z = torch.zeros(1, 2, 0, device=DEVICE)
    h0 = torch.randn(1, 2, 3, device=DEVICE)
    y, h = fn(z, z, -torch.ones(2, 3, device=DEVICE), torch.zeros(1, 3, 0, device=DEVICE),
              torch.zeros(1, 3, 0, device=DEVICE), initial_state=h0, return_final_state=True)
    assert y.shape == (1, 2, 0) and torch.equal(h, h0)


def test_shared_B_with_grouped_C():
    """B (B, N, L) shared by all channels while C has groups (B, G, N, L)."""
    x = make_inputs(batch=1, dim=4, L=20, N=3, groups=2)
    x["B"] = leaf(x["B"].detach()[:, 0])
    res = compare(x, "zoh")
    assert res["B"][1].shape == (1, 3, 20)
    for name, (r, t) in res.items():
        assert max_err(t, r) < 1e-10, (name, max_err(t, r))


@pytest.mark.parametrize("scheme,cu", [("zoh", None), ("euler_b", [0, 30, 30, 200, 260])])
def test_three_pass_split_over_L(monkeypatch, scheme, cu):
    """The split used for small B·D (forced here: 3 runs over 5 tiles of 64 steps, so one
    run is short and, packed, some are empty): run totals, composition, runs from their
    entering states, forward and backward; float64 to 1e-10 against the reference."""
    import importlib
    mod = importlib.import_module("hjseq.ops.selective_scan.triton")
    triton_backend(OP)
    monkeypatch.setattr(mod, "_pick_split", lambda m, block_d, device: 3)
    monkeypatch.delenv(mod.AUTOTUNE_ENV, raising=False)  # the spies wrap the plain kernels
    modes = []
    for name in ("_ssm_fwd_kernel", "_ssm_bwd_kernel"):
        kernel = getattr(mod, name)

        class Spy:
            def __getitem__(self, grid, kernel=kernel, name=name):
                def launch(*a, **kw):
                    modes.append((name, kw["MODE"]))
                    return kernel[grid](*a, **kw)
                return launch
        monkeypatch.setattr(mod, name, Spy())
    cu_t = None if cu is None else torch.tensor(cu, device=DEVICE)
    x = make_inputs(batch=1 if cu else 2, dim=2, L=260, N=3,
                    n_seq=None if cu is None else len(cu) - 1)
    res = compare(x, scheme, cu_t)
    assert modes == [("_ssm_fwd_kernel", 1), ("_ssm_fwd_kernel", 2), ("_ssm_bwd_kernel", 1),
                     ("_ssm_bwd_kernel", 2)]
    for name, (r, t) in res.items():
        assert max_err(t, r) < 1e-10 * max(1.0, r.abs().max().item()), (name, max_err(t, r))


@pytest.mark.skipif(HAS_CUDA, reason="fakes the autotuner's timer under the interpreter")
def test_autotuned_launch_resets_the_atomics(monkeypatch):
    """The autotuned path (HJSEQ_TRITON_AUTOTUNE=1 on CUDA), forced here with a stand-in
    timer that runs every candidate twice and prefers a later one: outputs and gradients
    stay exact, so dB/dC (atomics) are zeroed before each trial and before the real run."""
    import importlib
    import itertools
    mod = importlib.import_module("hjseq.ops.selective_scan.triton")
    triton_backend(OP)
    monkeypatch.setattr(mod, "_autotune", lambda t: True)
    ticks = itertools.count()

    def fake_bench(kernel_call, quantiles):
        kernel_call()
        kernel_call()
        t = float(10 - next(ticks) % 10)
        return [t, t, t]

    for tuned in (mod._ssm_fwd_tuned, mod._ssm_bwd_tuned):
        monkeypatch.setattr(tuned, "_do_bench", fake_bench)
        monkeypatch.delitem(tuned.__dict__, "do_bench", raising=False)
        monkeypatch.setattr(tuned, "cache", {})
    res = compare(make_inputs(batch=1, dim=4, L=70, N=3), "zoh")
    for name, (r, t) in res.items():
        assert max_err(t, r) < 1e-10, (name, max_err(t, r))
    chosen = [next(iter(k.cache.values())) for k in (mod._ssm_fwd_tuned, mod._ssm_bwd_tuned)]
    assert all(c.kwargs["BLOCK_D"] <= 4 for c in chosen)  # pruned to the 4 channels
