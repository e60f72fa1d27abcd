"""selective_state_update on the CPU: the C++ backend against the reference in float64 (both
layouts, tied head dims, state_batch_indices, in place or not, both schemes), "auto" picks the
C++ kernel, the error messages give sizes, and mamba-ssm's own test matrix
(tests/ops/triton/test_selective_state_update.py in the mamba-ssm repository) run against
mamba-ssm's ``selective_state_update_ref``.

mamba-ssm's matrix is kept (dims 2048/2064/4096, d_state 16/32/64, groups 1/2/4, z or not,
tied head dims or not, fp32/fp16/bf16, batch 2 and 16, its tolerances and its input draws);
the one change is the size of the state pool for the ``state_batch_indices`` cases, 2×batch
rows instead of 10×batch (any pool larger than the batch exercises the indexing). Where a
mamba-ssm tolerance fails, the case still passes only if hjseq is nearer a float64 truth
than mamba-ssm's reference is (mamba-ssm reads the output from the state *after* rounding
it to the state dtype; hjseq reads it from the float32 state).
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from _utils import assert_close
from hjseq.ops._registry import resolve
from hjseq.ops.selective_state_update import selective_state_update
from hjseq.ops.selective_state_update.ref import selective_state_update_ref

BACKENDS = ("ref", "cpu")


def _inputs(heads: bool, batch: int, pool: int, G: int, tied: bool, zoh_safe: bool,
            dtype=torch.float64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    if heads:
        H, P, N = 4, 3, 5
        inner = (H, P)
        A = -torch.rand(H, 1, 1, generator=g, dtype=dtype).expand(H, P, N) if tied else \
            -torch.rand(H, P, N, generator=g, dtype=dtype)
        dt = r(batch, H, 1).expand(batch, H, P) if tied else r(batch, *inner)
        D = r(H, 1).expand(H, P) if tied else r(*inner)
        bias = r(H, 1).expand(H, P) if tied else r(*inner)
    else:
        Dm, N = 6, 5
        inner = (Dm,)
        A, dt, D, bias = -torch.rand(Dm, N, generator=g, dtype=dtype), r(batch, Dm), r(Dm), r(Dm)
    if zoh_safe:  # include A = 0 entries: φ1 must be exact through 0
        A = A.clone()
        A.view(-1)[::3] = 0.0
    return dict(state=r(pool, *inner, N), x=r(batch, *inner), dt=dt, A=A,
                B=r(batch, G, N), C=r(batch, G, N), D=D, z=r(batch, *inner), dt_bias=bias)


@pytest.mark.parametrize("heads,groups,tied", [(False, 1, False), (False, 2, False),
                                               (True, 2, False), (True, 4, True)])
@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_cpu_matches_reference_fp64(heads, groups, tied, scheme, indexed, inplace):
    batch, pool = 3, (7 if indexed else 3)
    kw = _inputs(heads, batch, pool, groups, tied, zoh_safe=scheme == "zoh")
    idx = torch.tensor([5, 0, 2]) if indexed else None
    keep = kw["state"].clone()
    want_out, want_state = selective_state_update_ref(**{**kw, "state": keep.clone()},
                                                      dt_softplus=True, scheme=scheme,
                                                      state_batch_indices=idx)
    state = kw.pop("state").clone()
    out, new = selective_state_update(state, **kw, dt_softplus=True, scheme=scheme,
                                      state_batch_indices=idx, inplace=inplace, backend="cpu")
    assert_close(want_out, out, 1e-13, "out")
    assert_close(want_state, new, 1e-13, "state")
    if inplace:
        assert new is state
    else:
        assert torch.equal(state, keep)  # not modified
    if indexed:  # rows outside the batch are untouched
        rest = torch.ones(pool, dtype=torch.bool)
        rest[idx] = False
        assert torch.equal(new[rest], keep[rest])


@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32),
                                               (torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float16),
                                               (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("heads", [False, True])
def test_cpu_low_precision(dtype, state_dtype, heads):
    kw = _inputs(heads, 2, 2, 1, heads, zoh_safe=False, dtype=torch.float32, seed=1)
    kw = {k: (v.to(dtype) if k in ("x", "dt", "z") else v) for k, v in kw.items()}
    kw["state"] = kw["state"].to(state_dtype)
    want_out, want_state = selective_state_update_ref(**kw, dt_softplus=True)
    out, new = selective_state_update(**kw, dt_softplus=True, backend="cpu")
    assert out.dtype == dtype and new.dtype == state_dtype
    tol = 1e-5 if dtype == state_dtype == torch.float32 else 1e-2
    assert_close(want_out, out, tol, "out")
    assert_close(want_state, new, tol, "state")


def test_auto_on_cpu_runs_the_cpp_kernel():
    kw = _inputs(False, 2, 2, 1, False, zoh_safe=False, dtype=torch.float32)
    assert resolve("selective_state_update", "auto", "cpu", **kw)[0] == "cpu"


def test_errors_give_sizes():
    s, x = torch.zeros(2, 4, 3), torch.zeros(2, 4)
    A, B = torch.zeros(4, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"A must have shape \(D, N\) = \(4, 3\), got \(4, 2\)"):
        selective_state_update(s, x, x, torch.zeros(4, 2), B, B)
    with pytest.raises(ValueError, match=r"state must have shape \(S, D, N\) = \(S, 4, N\)"):
        selective_state_update(torch.zeros(2, 5, 3), x, x, A, B, B)
    with pytest.raises(ValueError, match=r"dt must have shape \(B, H, P\) = \(2, 4, 5\)"):
        selective_state_update(torch.zeros(2, 4, 5, 3), torch.zeros(2, 4, 5),
                               torch.zeros(2, 4, 4), torch.zeros(4, 5, 3), B, B)
    with pytest.raises(ValueError, match=r"B must be .*G dividing H=4"):
        selective_state_update(torch.zeros(2, 4, 5, 3), torch.zeros(2, 4, 5),
                               torch.zeros(2, 4, 5), torch.zeros(4, 5, 3),
                               torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="state_batch_indices must lie in"):
        selective_state_update(s, x, x, A, B, B, state_batch_indices=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="state_batch_indices must be distinct"):
        selective_state_update(s, x, x, A, B, B, state_batch_indices=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="state has 3 rows but x has batch 2"):
        selective_state_update(torch.zeros(3, 4, 3), x, x, A, B, B)
    with pytest.raises(ValueError, match="scheme"):
        selective_state_update(s, x, x, A, B, B, scheme="rk4")
    for backend in BACKENDS:  # no placeholder '*' in any message
        with pytest.raises(ValueError) as e:
            selective_state_update(s, torch.zeros(2, 5), x, A, B, B, backend=backend)
        assert "*" not in str(e.value)


# ---------------------------------------------------------------- mamba-ssm's test matrix
def _mamba_ref():
    """mamba-ssm's ``selective_state_update_ref`` (its CUDA extensions stubbed: only the
    pure-PyTorch reference is used); skips with the reason when mamba-ssm is absent."""
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        sys.modules.setdefault(name, types.ModuleType(name))
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update_ref
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"mamba-ssm is not importable ({type(e).__name__}: {e}); CI installs it")
    return selective_state_update_ref


def _tie(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return t.reshape(t.shape + (1,) * (len(shape) - t.dim())).expand(shape)


def _mamba_case(heads, dim, dstate, ngroups, has_z, tie_hdim, itype, indexed, tols):
    mamba_ref = _mamba_ref()
    torch.random.manual_seed(0)
    batch = 16 if indexed else 2
    pool = 2 * batch if indexed else batch
    if heads:
        headdim, nheads = 64, dim // 64
        inner = (nheads, headdim)
    else:
        inner = (dim,)
    state = torch.randn(pool, *inner, dstate, dtype=itype)
    idx = torch.randperm(pool)[:batch].to(torch.int32) if indexed else None
    x = torch.randn(batch, *inner, dtype=itype)
    if heads and tie_hdim:
        dt = _tie(torch.randn(batch, nheads, dtype=itype), (batch, *inner))
        dt_bias = _tie(torch.rand(nheads) - 4.0, inner)
        A = _tie(-torch.rand(nheads) - 1.0, (*inner, dstate))
        D = _tie(torch.randn(nheads), inner)
    else:
        dt = torch.randn(batch, *inner, dtype=itype)
        dt_bias = torch.rand(*inner) - 4.0
        A = -torch.rand(*inner, dstate) - 1.0
        D = torch.randn(*inner)
    G = (ngroups,) if heads else ()
    B = torch.randn(batch, *G, dstate)
    C = torch.randn(batch, *G, dstate)
    z = torch.randn_like(x) if has_z else None
    rows = idx.long() if indexed else slice(None)
    state_ref = state[rows].clone()
    orig = state[rows].clone()
    out_ref = mamba_ref(state_ref, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    out, new = selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                      dt_softplus=True, state_batch_indices=idx, inplace=True)
    assert new is state
    rtol, atol = tols
    for name, ours, theirs in (("state", state[rows], state_ref), ("out", out, out_ref)):
        if torch.allclose(ours.float(), theirs.float(), rtol=rtol, atol=atol):
            continue
        # outside mamba-ssm's tolerance: hjseq must then be nearer the float64 truth
        d = lambda t: None if t is None else t.double()  # noqa: E731
        t_out, t_state = selective_state_update_ref(d(orig), d(x), d(dt), d(A), d(B), d(C),
                                                    D=d(D), z=d(z), dt_bias=d(dt_bias),
                                                    dt_softplus=True)
        truth = t_state if name == "state" else t_out
        e_ours = (ours.double() - truth).abs().max().item()
        e_theirs = (theirs.double() - truth).abs().max().item()
        assert e_ours <= e_theirs, (f"{name}: outside mamba-ssm's tolerance and farther from "
                                    f"float64 ({e_ours:.3e}) than mamba-ssm's ref "
                                    f"({e_theirs:.3e})")


ITYPES = [torch.float32, torch.float16, torch.bfloat16]


def _tols(itype, fp32, half, bf16):
    return {torch.float32: fp32, torch.float16: half, torch.bfloat16: bf16}[itype]


@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("dstate", [16, 32, 64])
@pytest.mark.parametrize("dim", [2048, 2048 + 16, 4096])
@pytest.mark.parametrize("indexed", [False, True])
def test_mamba_matrix_channels(dim, dstate, has_z, itype, indexed):
    bf16 = (6e-2, 6e-2) if indexed else (1e-2, 5e-2)
    _mamba_case(False, dim, dstate, 1, has_z, False, itype, indexed,
                _tols(itype, (3e-4, 1e-3), (5e-3, 1e-2), bf16))


@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("tie_hdim", [False, True])
@pytest.mark.parametrize("ngroups", [1, 2, 4])
@pytest.mark.parametrize("dstate", [16, 32, 64])
@pytest.mark.parametrize("dim", [2048, 4096])
@pytest.mark.parametrize("indexed", [False, True])
def test_mamba_matrix_heads(dim, dstate, ngroups, has_z, tie_hdim, itype, indexed):
    bf16 = (1e-1, 1e-1) if indexed else (1e-2, 1e-1)
    _mamba_case(True, dim, dstate, ngroups, has_z, tie_hdim, itype, indexed,
                _tols(itype, (3e-4, 1e-3), (5e-3, 3e-2), bf16))
