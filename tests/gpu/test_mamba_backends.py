"""backend="mamba": argument translation to mamba-ssm / causal-conv1d, the features it
declines, and a clear BackendUnavailable where the packages are missing.

The translation is checked against stand-in modules whose functions have the packages'
exact signatures (keyword-only where theirs are keywords) and compute the reference, so a
misnamed or misplaced argument fails here; on a machine with the real packages the
gpu-marked tests in test_cuda_gpu.py run them for real."""
from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from _gpu_testutil import max_err
from hjseq.ops._registry import BackendUnavailable
from hjseq.ops.causal_conv1d.ref import causal_conv1d_ref
from hjseq.ops.selective_scan.ref import selective_scan_ref


def _mod(name):
    return importlib.import_module(f"hjseq.ops.{name}.mamba")


@pytest.fixture
def fake_packages(monkeypatch):
    """Install stand-ins for mamba_ssm and causal_conv1d with their real signatures."""
    calls = {}

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
        calls["selective_scan_fn"] = dict(A_dtype=A.dtype)
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, None,
                                  return_last_state)

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
                         return_final_states=False, final_states_out=None, activation=None):
        if return_final_states:
            assert x.stride(1) == 1, "causal-conv1d returns final states for channel-last x only"
        calls["causal_conv1d_fn"] = dict(seq_idx=seq_idx)
        cu = None
        if seq_idx is not None:  # the package's packed-sequence index, as offsets
            assert x.stride(1) == 1, "causal-conv1d reads seq_idx with channel-last x only"
            counts = torch.bincount(seq_idx[0].long())
            cu = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return causal_conv1d_ref(x, weight, bias, activation, initial_states,
                                 return_final_states, cu)

    def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
        from hjseq.ops.selective_state_update.ref import selective_state_update_ref
        out, new = selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
        state.copy_(new)  # mamba-ssm updates in place
        return out

    pkgs = {
        "mamba_ssm": types.ModuleType("mamba_ssm"),
        "mamba_ssm.ops": types.ModuleType("mamba_ssm.ops"),
        "mamba_ssm.ops.selective_scan_interface":
            types.SimpleNamespace(selective_scan_fn=selective_scan_fn),
        "mamba_ssm.ops.triton": types.ModuleType("mamba_ssm.ops.triton"),
        "mamba_ssm.ops.triton.selective_state_update":
            types.SimpleNamespace(selective_state_update=selective_state_update),
        "causal_conv1d": types.SimpleNamespace(causal_conv1d_fn=causal_conv1d_fn),
    }
    for k, v in pkgs.items():
        monkeypatch.setitem(sys.modules, k, v)
    return calls


def _ssm_inputs():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(2, 4, 9), delta=r(2, 4, 9), A=-r(4, 3).abs().double(), B=r(2, 2, 3, 9),
                C=r(2, 2, 3, 9), D=r(4), z=r(2, 4, 9), delta_bias=r(4), delta_softplus=True,
                return_final_state=True)


def test_selective_scan_translation(fake_packages):
    fn = _mod("selective_scan").load()
    kw = _ssm_inputs()
    y, h = fn(**kw)
    y_ref, h_ref = selective_scan_ref(**kw)
    assert max_err(y, y_ref) < 1e-5 and max_err(h, h_ref) < 1e-5
    assert fake_packages["selective_scan_fn"]["A_dtype"] == torch.float32


def test_causal_conv1d_translation(fake_packages):
    fn = _mod("causal_conv1d").load()
    g = torch.Generator().manual_seed(0)
    x, w, b, h0 = (torch.randn(*s, generator=g) for s in ((2, 4, 9), (4, 3), (4,), (2, 4, 2)))
    y, f = fn(x, w, b, "silu", h0, True)
    y_ref, f_ref = causal_conv1d_ref(x, w, b, "silu", h0, True)
    assert max_err(y, y_ref) < 1e-6 and max_err(f, f_ref) < 1e-6
    cu = torch.tensor([0, 3, 9])
    y = fn(x[:1], w, b, None, cu_seqlens=cu)
    assert max_err(y, causal_conv1d_ref(x[:1], w, b, None, cu_seqlens=cu)) < 1e-6
    seq_idx = fake_packages["causal_conv1d_fn"]["seq_idx"]
    assert seq_idx.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 1]]


def test_state_update_translation_does_not_mutate(fake_packages):
    fn = _mod("selective_state_update").load()
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 4, 3, generator=g)
    keep = state.clone()
    x, dt = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    A, B, C = -torch.rand(4, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    out, new = fn(state, x, dt, A, B, C, dt_softplus=True)
    from hjseq.ops.selective_state_update.ref import selective_state_update_ref
    ref_out, ref_new = selective_state_update_ref(keep, x, dt, A, B, C, dt_softplus=True)
    assert torch.equal(state, keep)
    assert max_err(out, ref_out) < 1e-6 and max_err(new, ref_new) < 1e-6


def test_declined_features_have_reasons():
    ss, cc = _mod("selective_scan"), _mod("causal_conv1d")
    u = torch.zeros(1, 2, 3)
    assert "euler_b" in ss.supports(u=u, scheme="zoh")
    assert "cu_seqlens" in ss.supports(u=u, cu_seqlens=torch.tensor([0, 3]))
    assert "initial_state" in ss.supports(u=u, initial_state=torch.zeros(1, 2, 4))
    assert "float64" in ss.supports(u=u.double())
    assert ss.supports(u=u, scheme="euler_b") is None
    assert "widths" in cc.supports(x=u, weight=torch.zeros(2, 5))
    assert "packed" in cc.supports(x=u, weight=torch.zeros(2, 4), cu_seqlens=torch.tensor([0, 3]),
                                   return_final_state=True)
    assert "euler_b" in _mod("selective_state_update").supports(scheme="zoh")


@pytest.mark.parametrize("op,package", [("selective_scan", "mamba_ssm"),
                                        ("causal_conv1d", "causal_conv1d"),
                                        ("selective_state_update", "mamba_ssm")])
def test_missing_package_is_backend_unavailable(op, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(BackendUnavailable, match=package):
        _mod(op).load()
