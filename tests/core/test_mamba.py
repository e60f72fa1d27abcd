"""HJMamba against an independent implementation of Mamba's published forward (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hjseq.nn import HJMamba

f64 = torch.float64


class MambaReference(nn.Module):
    """Mamba (Gu & Dao 2023, Alg. 2 / mamba_simple.Mamba's slow path), written from the paper:
    in_proj -> (x, z); x = silu(causal depthwise conv(x)); (dt, B, C) = x_proj(x);
    Δ = softplus(dt_proj(dt)); h_t = exp(ΔA) h + B̄ x_t; y = C h + D x; out_proj(y·silu(z))."""

    def __init__(self, d_model, d_state, d_conv, expand, dt_rank, bias, conv_bias):
        super().__init__()
        d_inner = expand * d_model
        self.dims = (d_inner, d_state, dt_rank)
        kw = dict(dtype=f64)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias, **kw)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1,
                                bias=conv_bias, **kw)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(dt_rank, d_inner, **kw)
        self.A_log = nn.Parameter(torch.rand(d_inner, d_state, **kw) * 2 - 1)
        self.D = nn.Parameter(torch.randn(d_inner, **kw))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **kw)

    def forward(self, hidden, scheme="euler_b", h0=None):
        Bsz, L, _ = hidden.shape
        d_inner, N, R = self.dims
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)      # (B, D, L)
        x = F.silu(self.conv1d(x)[..., :L])
        dt, Bm, Cm = self.x_proj(x.transpose(1, 2)).split([R, N, N], dim=-1)
        delta = F.softplus(dt @ self.dt_proj.weight.T + self.dt_proj.bias)   # (B, L, D)
        A = -torch.exp(self.A_log)
        h = torch.zeros(Bsz, d_inner, N, dtype=f64) if h0 is None else h0
        ys = []
        for t in range(L):
            dA = torch.exp(delta[:, t, :, None] * A)
            if scheme == "euler_b":
                Bbar = delta[:, t, :, None] * Bm[:, t, None, :]
            else:
                Bbar = (dA - 1) / A * Bm[:, t, None, :]
            h = dA * h + Bbar * x[:, :, t, None]
            ys.append((h * Cm[:, t, None, :]).sum(-1))
        y = torch.stack(ys, dim=-1) + self.D[:, None] * x                 # (B, D, L)
        y = y * F.silu(z)
        return self.out_proj(y.transpose(1, 2)), h


CONFIGS = [dict(d_model=4, d_state=3, d_conv=3, expand=2, dt_rank=2, bias=False, conv_bias=True),
           dict(d_model=6, d_state=5, d_conv=4, expand=1, dt_rank=1, bias=True, conv_bias=False)]


def _pair(cfg, scheme, backend="auto"):
    torch.manual_seed(0)
    ref = MambaReference(**cfg)
    blk = HJMamba(cfg["d_model"], d_state=cfg["d_state"], d_conv=cfg["d_conv"],
                  expand=cfg["expand"], dt_rank=cfg["dt_rank"], bias=cfg["bias"],
                  conv_bias=cfg["conv_bias"], scheme=scheme, dtype=f64, backend=backend)
    blk.load_state_dict(ref.state_dict(), strict=True)
    return ref, blk


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
@pytest.mark.parametrize("backend", ["auto", "loop"])
def test_matches_independent_mamba(cfg, scheme, backend):
    ref, blk = _pair(cfg, scheme, backend)
    x = torch.randn(2, 9, cfg["d_model"], dtype=f64, requires_grad=True)
    out, (conv_state, h) = blk(x, return_final_state=True)
    rout, rh = ref(x, scheme)
    assert (out - rout).abs().max() <= 1e-10
    assert (h - rh).abs().max() <= 1e-10
    # conv_state: the last d_conv - 1 pre-conv inputs
    xin = blk.in_proj(x)[..., :blk.d_inner]
    assert (conv_state - xin[:, -(cfg["d_conv"] - 1):].transpose(1, 2)).abs().max() == 0
    w = torch.randn_like(out)
    names = [n for n, _ in ref.named_parameters()]
    g = torch.autograd.grad((out * w).sum(), [x, *[dict(blk.named_parameters())[n] for n in names]])
    rg = torch.autograd.grad((rout * w).sum(), [x, *ref.parameters()])
    for name, a, b in zip(["x", *names], g, rg):
        assert (a - b).abs().max() <= 1e-10, name


def test_parameter_names_shapes_and_init_follow_mamba():
    blk = HJMamba(32, d_state=8, d_conv=4, expand=2, dt_min=0.01, dt_max=0.1)
    ref = MambaReference(32, 8, 4, 2, math.ceil(32 / 16), False, True)
    assert {n: p.shape for n, p in blk.state_dict().items()} == \
        {n: p.shape for n, p in ref.state_dict().items()}
    assert torch.equal(blk.A_log, torch.log(torch.arange(1, 9.0)).repeat(64, 1))
    assert torch.equal(blk.D, torch.ones(64))
    dt = F.softplus(blk.dt_proj.bias)
    assert (dt >= 0.01 * (1 - 1e-5)).all() and (dt <= 0.1 * (1 + 1e-5)).all()
    bound = blk.dt_rank ** -0.5
    assert blk.dt_proj.weight.abs().max() <= bound
    assert blk.A_log.dtype == torch.float32 and blk.D.dtype == torch.float32


@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
def test_step_and_chunks_equal_forward(scheme):
    _, blk = _pair(CONFIGS[0], scheme)
    x = torch.randn(2, 8, 4, dtype=f64)
    out, final = blk(x, return_final_state=True)
    state, ys = blk.allocate_state(2), []
    for t in range(8):
        y, state = blk.step(x[:, t], state)
        ys.append(y)
    assert (torch.stack(ys, 1) - out).abs().max() <= 1e-12
    for a, b in zip(state, final):
        assert (a - b).abs().max() <= 1e-12
    o1, s1 = blk(x[:, :2], return_final_state=True)  # shorter than d_conv - 1 + 1 is fine too
    o2, s2 = blk(x[:, 2:], s1, return_final_state=True)
    assert (torch.cat([o1, o2], 1) - out).abs().max() <= 1e-12
    for a, b in zip(s2, final):
        assert (a - b).abs().max() <= 1e-12


def test_zoh_vs_euler_b_second_order_per_step():
    """With a constant Δ (dt_proj.weight = 0, bias = softplus⁻¹(Δ)), one token from the same
    SSM state: the final states of the two schemes differ by O(Δ²)."""
    cfg = CONFIGS[0]
    x = torch.randn(2, 1, 4, dtype=f64)
    state0 = None
    dts, diffs = [0.08, 0.04, 0.02, 0.01], []
    for dt in dts:
        finals = []
        for scheme in ("euler_b", "zoh"):
            _, blk = _pair(cfg, scheme)
            with torch.no_grad():
                blk.dt_proj.weight.zero_()
                blk.dt_proj.bias.fill_(math.log(math.expm1(dt)))
            if state0 is None:
                state0 = (torch.randn(2, blk.d_inner, cfg["d_conv"] - 1, dtype=f64),
                          torch.randn(2, blk.d_inner, cfg["d_state"], dtype=f64))
            finals.append(blk(x, state0, return_final_state=True)[1][1].detach())
        diffs.append(float((finals[0] - finals[1]).abs().max()))
    slope = np.polyfit(np.log(dts), np.log(diffs), 1)[0]
    assert abs(slope - 2) < 0.05, diffs


def test_gradcheck_tiny():
    cfg = dict(d_model=2, d_state=2, d_conv=2, expand=1, dt_rank=1, bias=True, conv_bias=True)
    _, blk = _pair(cfg, "zoh")
    names = [n for n, _ in blk.named_parameters()]
    x = torch.randn(1, 3, 2, dtype=f64, requires_grad=True)
    s0 = [torch.randn(1, 2, 1, dtype=f64, requires_grad=True),
          torch.randn(1, 2, 2, dtype=f64, requires_grad=True)]

    def fn(x, c0, h0, *params):
        out, (c, h) = torch.func.functional_call(blk, dict(zip(names, params)),
                                                 (x, (c0, h0), True))
        return out, h

    params = [p.detach().clone().requires_grad_() for p in blk.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *s0, *params))


def test_characteristics_view():
    _, blk = _pair(CONFIGS[0], "euler_b")
    x = torch.randn(2, 5, 4, dtype=f64)
    ch = blk.characteristics(x)
    out = blk(x)
    D, N = blk.d_inner, blk.d_state
    assert ch.states.shape == (2, 6, D * N) and ch.scheme == "euler_b" and ch.order == 1
    assert (ch.outputs - out).abs().max() <= 1e-13
    with torch.no_grad():
        for k in range(5):
            h = ch.states[:, k]
            assert (ch.discrete_step(k, h) - ch.states[:, k + 1]).abs().max() <= 1e-13
            assert torch.equal(ch.substep(k, h, 1), ch.discrete_step(k, h))
            assert (ch.readout(k, ch.states[:, k + 1]) - out[:, k]).abs().max() <= 1e-13
        # euler_b substeps converge (first order) to the exact flow of rhs, which zoh gives
        _, zblk = _pair(CONFIGS[0], "zoh")
        zch = zblk.characteristics(x)
        h = ch.states[:, 3]
        exact = zch.discrete_step(3, h)
        assert (zch.substep(3, h, 7) - exact).abs().max() <= 1e-13  # zoh: exact for any m
        ms = [2, 4, 8, 16]
        errs = [float((ch.substep(3, h, m) - exact).abs().max()) for m in ms]
        assert abs(np.polyfit(np.log(ms), np.log(errs), 1)[0] + 1) < 0.1, errs
        # rhs is Δ_k ⊙ (A⊙h + B_k u_k), recomputed here from the block's parameters
        L = x.shape[1]
        xi = blk.in_proj(x)[..., :D].transpose(1, 2)
        u = F.silu(blk.conv1d(xi)[..., :L]).transpose(1, 2)                  # (B, L, D)
        dt, Bm, _ = blk.x_proj(u).split([blk.dt_rank, N, N], dim=-1)
        delta = F.softplus(blk.dt_proj(dt))
        A = -torch.exp(blk.A_log)
        hh = h.reshape(2, D, N)
        want = delta[:, 3, :, None] * (A * hh + Bm[:, 3, None, :] * u[:, 3, :, None])
        assert (ch.rhs(3, h) - want.flatten(1)).abs().max() <= 1e-13


def test_bad_input_errors_name_the_argument():
    blk = HJMamba(4, d_state=3, d_conv=3, dtype=f64)
    x = torch.randn(2, 5, 4, dtype=f64)
    with pytest.raises(ValueError, match="scheme"):
        HJMamba(4, scheme="rk4")
    with pytest.raises(ValueError, match="d_model"):
        HJMamba(0)
    with pytest.raises(ValueError, match="dt_min"):
        HJMamba(4, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="backend"):
        HJMamba(4, backend="fastest")
    with pytest.raises(ValueError, match=r"x must be \(B, L, 4\)"):
        blk(torch.randn(2, 5, 3, dtype=f64))
    conv, ssm = blk.allocate_state(2)
    with pytest.raises(ValueError, match="conv_state"):
        blk(x, (conv[:, :, :1], ssm))
    with pytest.raises(ValueError, match="ssm_state"):
        blk(x, (conv, ssm[:1]))
    with pytest.raises(ValueError, match="tuple"):
        blk(x, ssm)
    with pytest.raises(TypeError, match="ssm_state"):
        HJMamba(4, d_state=3, d_conv=3)(torch.randn(2, 5, 4),
                                        (torch.zeros(2, 8, 2), torch.zeros(2, 8, 3, dtype=f64)))
    chk = HJMamba(4, d_state=3, d_conv=3, dtype=f64, check_finite=True)
    with torch.no_grad():
        chk.A_log[0, 0] = float("nan")
    with pytest.raises(ValueError, match="A_log"):
        chk(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_states_and_paths(dtype):
    """Low precision as Mamba: conv state in the input dtype, SSM state in float32; the
    reference loop and the selective_scan path agree to the output dtype's rounding."""
    blk = HJMamba(8, d_state=4, d_conv=3, dtype=dtype)
    assert blk.A_log.dtype == torch.float32
    x = torch.randn(2, 6, 8, dtype=dtype)
    out, (conv, h) = blk(x, return_final_state=True)
    assert out.dtype == dtype and conv.dtype == dtype and h.dtype == torch.float32
    blk.backend = "loop"
    out_loop, (_, h_loop) = blk(x, return_final_state=True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (out.float() - out_loop.float()).abs().max() <= tol
    assert (h - h_loop).abs().max() <= 1e-5
    y, state = blk.step(x[:, 0], blk.allocate_state(2))
    assert y.dtype == dtype and state[1].dtype == torch.float32
