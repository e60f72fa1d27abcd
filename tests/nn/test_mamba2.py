"""HJMamba2 against an independent Mamba-2 recurrence (float64), HF's Mamba2Mixer and
mamba-ssm's Mamba2 (parameter names, its own decoding step)."""
from __future__ import annotations

import importlib.util
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from hjseq.nn import HJMamba2
from hjseq.solver.compare import compare
from hjseq.solver.costate import block_states, costate, flow_indices

f64 = torch.float64
HAS_HF = importlib.util.find_spec("transformers") is not None
HAS_MAMBA = importlib.util.find_spec("mamba_ssm") is not None

CONFIGS = [dict(),                                          # one group, D per head
           dict(ngroups=2, bias=True, conv_bias=False),
           dict(d_ssm=8, D_has_hdim=True),                  # gated-MLP lanes, D per channel
           dict(rmsnorm=False, dt_limit=(0.05, 0.4)),
           dict(ngroups=2, norm_before_gate=True, d_conv=1)]


def small(scheme="euler_b", **kw):
    args = dict(d_model=8, d_state=5, d_conv=3, headdim=4, scheme=scheme)
    m = HJMamba2(**{**args, **kw}).double()
    with torch.no_grad():  # away from the init so every term matters
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def reference(m: HJMamba2, u, scheme, S0=None, time_steps=None):
    """Mamba-2 written from the paper, token by token: in_proj -> (z0, x0, z, xBC, dt);
    xBC = silu(causal depthwise conv); Δ = softplus(dt + dt_bias) (clamped to dt_limit);
    S = e^{ΔA} S + β x Bᵀ (β = Δ, or (e^{ΔA} − 1)/A for zoh); y = S C + D x;
    y = RMSNorm per group (y·silu(z)) (or y·silu(z)); out_proj([silu(z0)·x0, y])."""
    b, L, _ = u.shape
    H, P, N, G = m.nheads, m.headdim, m.d_state, m.ngroups
    z0, x0, z, xBC, dt = F.linear(u, m.in_proj.weight, m.in_proj.bias).split(
        [m.d_mlp, m.d_mlp, m.d_ssm, m.conv_dim, H], dim=-1)
    xBC = F.silu(F.conv1d(xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias,
                          padding=m.d_conv - 1, groups=m.conv_dim)[..., :L].transpose(1, 2))
    x, Bm, Cm = xBC.split([m.d_ssm, G * N, G * N], dim=-1)
    x = x.reshape(b, L, H, P)
    Bm = Bm.reshape(b, L, G, N).repeat_interleave(H // G, dim=2)
    Cm = Cm.reshape(b, L, G, N).repeat_interleave(H // G, dim=2)
    delta = F.softplus(dt + m.dt_bias).clamp(*m.dt_limit)
    if time_steps is not None:  # irregular time: each token's interval multiplies Δ
        delta = delta * time_steps[..., None]
    A = -torch.exp(m.A_log)
    D = m.D.reshape(H, P) if m.D_has_hdim else m.D[:, None]
    S = torch.zeros(b, H, P, N, dtype=u.dtype) if S0 is None else S0
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t] * A)                                  # (b, H)
        beta = delta[:, t] if scheme == "euler_b" else (dA - 1) / A
        S = dA[..., None, None] * S + beta[..., None, None] * x[:, t, :, :, None] \
            * Bm[:, t, :, None, :]
        ys.append((S * Cm[:, t, :, None, :]).sum(-1) + D * x[:, t])
    y = torch.stack(ys, 1).reshape(b, L, m.d_ssm)
    if m.rmsnorm:
        gate = F.silu(z)
        g = (y if m.norm.norm_before_gate else y * gate).reshape(b, L, G, -1)
        y = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + m.norm.eps)).reshape(b, L, -1)
        y = y * m.norm.weight * (gate if m.norm.norm_before_gate else 1)
    else:
        y = y * F.silu(z)
    if m.d_mlp:
        y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    return F.linear(y, m.out_proj.weight, m.out_proj.bias), S


@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_matches_reference_every_path(cfg, scheme):
    m = small(scheme, **CONFIGS[cfg])
    u = torch.randn(2, 13, 8, dtype=f64)
    want, S_want = reference(m, u, scheme)
    assert m.fused_path() == "ssd"
    out, (conv, S) = m(u, return_final_state=True)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(S, S_want, rtol=1e-10, atol=1e-12)
    m.backend = "loop"
    torch.testing.assert_close(m(u), want, rtol=1e-10, atol=1e-12)
    m.backend = "auto"
    state, ys = None, []
    for t in range(u.shape[1]):
        y, state = m.step(u[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state[1], S, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state[0], conv, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scheme", ["euler_b", "zoh", "exp_trapezoidal"])
def test_irregular_time_dt_on_every_path(scheme):
    m = small(scheme, ngroups=2)
    u = torch.randn(2, 9, 8, dtype=f64)
    dt = torch.rand(2, 9, dtype=f64) + 0.5
    out, _ = m(u, return_final_state=True, dt=dt)
    if scheme != "exp_trapezoidal":  # (the carried-input rule has no closed form here)
        torch.testing.assert_close(out, reference(m, u, scheme, time_steps=dt)[0],
                                   rtol=1e-10, atol=1e-12)
    m.backend = "loop"
    torch.testing.assert_close(m(u, dt=dt), out, rtol=1e-10, atol=1e-12)
    m.backend = "auto"
    state, ys = None, []
    for t in range(u.shape[1]):
        y, state = m.step(u[:, t], state, dt[:, t])
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), out, rtol=1e-10, atol=1e-12)


def test_initial_state_continues_the_sequence_and_gradients_match_loop():
    m = small(ngroups=2)
    u = torch.randn(2, 11, 8, dtype=f64, requires_grad=True)
    full, (_, S_full) = m(u, return_final_state=True)
    a, st = m(u[:, :6], return_final_state=True)
    b, (_, S_b) = m(u[:, 6:], initial_state=st, return_final_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(S_b, S_full, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(full)
    grads = []
    for backend in ("auto", "loop"):
        m.backend = backend
        out, (_, S) = m(u, return_final_state=True)
        g = torch.autograd.grad((out * w).sum() + S.sum(), [u, *m.parameters()])
        grads.append(g)
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11)


def test_float32_and_bfloat16_states():
    m = small(ngroups=2).float()
    u = torch.randn(2, 70, 8)
    want, _ = reference(m.double(), u.double(), "euler_b")
    m.float()
    out, (conv, S) = m(u, return_final_state=True)
    assert S.dtype == torch.float32 and conv.dtype == torch.float32
    torch.testing.assert_close(out, want.float(), rtol=1e-4, atol=1e-5)
    mb = small(ngroups=2).to(torch.bfloat16)
    mb.D.data = mb.D.data.float()
    ob, (cb, Sb) = mb(u.to(torch.bfloat16), return_final_state=True)
    assert ob.dtype == torch.bfloat16 and cb.dtype == torch.bfloat16 and Sb.dtype == torch.float32
    assert torch.isfinite(ob).all()


def test_viscosity_adds_noise_in_training_only():
    m = small(eps=0.05)
    u = torch.randn(1, 6, 8, dtype=f64)
    m.eval()
    assert m.fused_path() == "ssd"
    clean = m(u)
    m.train()
    assert m.fused_path() == "linear_scan"  # noise enters the state: S per token
    torch.manual_seed(3)
    noisy = m(u)
    m.backend = "loop"
    torch.manual_seed(3)
    torch.testing.assert_close(m(u), noisy, rtol=1e-10, atol=1e-12)
    assert (noisy - clean).abs().max() > 1e-4


def test_solver_orders_and_costate():
    u = torch.randn(1, 4, 8, dtype=f64)
    for scheme in ("zoh", "euler_b"):
        m = small(scheme, ngroups=2)
        with torch.no_grad():
            m.dt_bias.add_(1.0)  # Δ ≈ 1.3: the Euler-B error is well above round-off
        rep = compare(m, u, refinements=(1, 2, 4, 8))
        if scheme == "zoh":
            assert rep.declared_order == math.inf and rep.global_max_error < 1e-10
        else:
            assert rep.declared_order == 1 and 0.8 < rep.observed_order < 1.2
            e = rep.refinement_error
            assert e[0] > e[1] > e[2] > e[3] > 0
    # the co-state recursion (one VJP of block.step per token) on the full (conv, ssm) state
    m = small(ngroups=2)
    states, step = block_states(m, u)
    idx = flow_indices(m, u)
    assert idx.tolist() == list(range(m.conv_dim * 2, states.shape[-1]))
    w = torch.randn_like(states)
    p = costate(m, u, w)
    leaf = states[:, 0].clone().requires_grad_(True)
    traj = [leaf]
    for k in range(u.shape[1]):
        traj.append(step(k, traj[-1]))
    (g0,) = torch.autograd.grad((w * torch.stack(traj, 1)).sum(), leaf)
    torch.testing.assert_close(p[:, 0], g0, rtol=1e-10, atol=1e-12)
    # a loss on the final SSM state only: p_k = (Π_{j>=k} e^{Δ_j a}) λ on the flow part
    w_last = torch.zeros_like(states)
    w_last[:, -1, idx] = torch.randn(1, idx.numel(), dtype=f64)
    p_last = costate(m, u, w_last)[..., idx].reshape(1, u.shape[1] + 1, m.nheads, -1)
    lam = w_last[:, -1, idx].reshape(1, m.nheads, -1)
    seq, const, _ = m.prepare(u, m.zero_state(u))
    decay = torch.exp(F.softplus(seq["dt"]) * const["a"])                 # (1, L, H)
    for k in range(u.shape[1] + 1):
        torch.testing.assert_close(p_last[:, k], decay[:, k:].prod(1)[..., None] * lam,
                                   rtol=1e-10, atol=1e-12)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="headdim"):
        HJMamba2(8, headdim=5)
    with pytest.raises(ValueError, match="ngroups=3"):
        HJMamba2(8, headdim=4, ngroups=3)
    with pytest.raises(ValueError, match="scheme must be one of"):
        HJMamba2(8, headdim=4, scheme="hopf_cole")
    with pytest.raises(ValueError, match="dt_limit"):
        HJMamba2(8, headdim=4, dt_limit=(0.5, 0.1))
    m = small()
    with pytest.raises(ValueError, match=r"\(B, L, 8\)"):
        m(torch.randn(2, 3, 7, dtype=f64))
    with pytest.raises(ValueError, match="ssm_state"):
        m.step(torch.randn(2, 8, dtype=f64), (torch.zeros(2, m.conv_dim, 2, dtype=f64),
                                              torch.zeros(2, 1, 4, 5, dtype=f64)))
    with pytest.raises(TypeError, match="dtype"):
        m.step(torch.randn(2, 8), None)


@pytest.mark.skipif(not HAS_HF, reason="transformers not installed")
@pytest.mark.parametrize("n_groups", [1, 2])
def test_matches_transformers_mamba2_mixer(n_groups, monkeypatch):
    # transformers binds mamba-ssm's CUDA kernels when its modeling module is imported and
    # `import mamba_ssm` succeeds (as after another test imported it on stand-ins): import
    # the module afresh with mamba_ssm blocked, so its torch path runs in any test order
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    monkeypatch.delitem(sys.modules, "transformers.models.mamba2.modeling_mamba2", raising=False)
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = Mamba2Config(hidden_size=16, num_heads=4, head_dim=8, expand=2, state_size=8,
                       n_groups=n_groups, conv_kernel=4, chunk_size=8, num_hidden_layers=1,
                       vocab_size=8)
    hf = Mamba2Mixer(cfg, layer_idx=0).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m = HJMamba2(16, d_state=8, d_conv=4, headdim=8, ngroups=n_groups, chunk_size=8,
                 norm_eps=cfg.layer_norm_epsilon)
    m.load_state_dict(hf.state_dict(), strict=True)
    u = torch.randn(2, 21, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(u), hf(u), rtol=1e-4, atol=1e-5)


@pytest.fixture
def mamba_ssm_mamba2():
    """mamba_ssm.modules.mamba2 imported on a CPU (empty stand-ins for its compiled modules),
    all of it taken out of sys.modules afterwards: the stand-ins would otherwise make
    transformers pick mamba-ssm's CUDA kernels in later tests."""
    before = set(sys.modules)
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import mamba_ssm.modules.mamba2 as mod
    yield mod
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("mamba_ssm", "selective_scan_cuda", "causal_conv1d_cuda"):
            del sys.modules[name]


@pytest.mark.skipif(not HAS_MAMBA, reason="mamba-ssm not installed (CI installs it)")
def test_loads_mamba_ssm_state_dict_and_matches_its_step(monkeypatch, mamba_ssm_mamba2):
    mod = mamba_ssm_mamba2
    from mamba_ssm.ops.triton.layernorm_gated import rms_norm_ref

    torch.manual_seed(2)
    for kw in (dict(d_ssm=16, D_has_hdim=True), dict(ngroups=2, bias=True)):
        ref = mod.Mamba2(16, d_state=8, d_conv=4, headdim=8, chunk_size=8, **kw)
        m = HJMamba2(16, d_state=8, d_conv=4, headdim=8, chunk_size=8, **kw)
        assert {k: v.shape for k, v in m.state_dict().items()} == \
            {k: v.shape for k, v in ref.state_dict().items()}
        m.load_state_dict(ref.state_dict(), strict=True)
    # outputs: mamba-ssm's pure-torch decoding step (its Triton kernels need a GPU), float32
    monkeypatch.setattr(mod, "selective_state_update", None)
    monkeypatch.setattr(mod, "causal_conv1d_update", None)
    ref = mod.Mamba2(16, d_state=8, d_conv=4, headdim=8, chunk_size=8)
    n = ref.norm
    monkeypatch.setattr(n, "forward", lambda x, z=None: rms_norm_ref(
        x, n.weight, n.bias, z=z, eps=n.eps, group_size=n.group_size,
        norm_before_gate=n.norm_before_gate))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m = HJMamba2(16, d_state=8, d_conv=4, headdim=8, chunk_size=8)
    m.load_state_dict(ref.state_dict(), strict=True)
    u = torch.randn(2, 9, 16)
    conv, ssm = ref.allocate_inference_cache(2, 9, dtype=torch.float32)
    with torch.no_grad():
        want = torch.cat([ref.step(u[:, t:t + 1], conv, ssm)[0] for t in range(9)], 1)
        out, (_, S) = m(u, return_final_state=True)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(S, ssm, rtol=1e-4, atol=1e-5)
