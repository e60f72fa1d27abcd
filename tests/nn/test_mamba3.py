"""HJMamba3: mamba-ssm's Mamba3 parameter layout (its state dict loads and, with its forward
run on CPU, gives the same outputs), the three paths (fused op, structural fused path, the
engine's loop) equal with every gradient, decoding step = forward, state passing, the
characteristic ODE (euler_b: order 1), the HJLM kind, validation."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from hjseq.models import HJLM
from hjseq.nn import HJMamba3
from hjseq.ops import mamba3_siso
from hjseq.solver.compare import compare

f64 = torch.float64
HAVE_MAMBA = importlib.util.find_spec("mamba_ssm") is not None


def small(trapezoidal=True, dtype=f64, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"d_state": 16, "headdim": 8, "chunk_size": 4, **kw}
    m = HJMamba3(32, trapezoidal=trapezoidal, dtype=dtype, **kw)
    with torch.no_grad():  # move off the init (biases 1, norms 1, D 1) so every term counts
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def mamba_layout(d_model, d_state=128, expand=2, headdim=64, ngroups=1, rope_fraction=0.5,
                 is_outproj_norm=False):
    """Parameter names and shapes of mamba_ssm.modules.mamba3.Mamba3 (SISO), written out
    from its __init__ (used when mamba-ssm is not installed)."""
    d_inner = int(expand * d_model)
    H = d_inner // headdim
    split = int(d_state * rope_fraction)
    A = (split - split % 2) // 2
    shapes = {"dt_bias": (H,), "B_bias": (H, 1, d_state), "C_bias": (H, 1, d_state), "D": (H,),
              "in_proj.weight": (2 * d_inner + 2 * d_state * ngroups + 3 * H + A, d_model),
              "B_norm.weight": (d_state,), "C_norm.weight": (d_state,),
              "out_proj.weight": (d_model, d_inner)}
    if is_outproj_norm:
        shapes["norm.weight"] = (d_inner,)
    return shapes


@pytest.mark.parametrize("kw", [{}, {"ngroups": 2, "rope_fraction": 1.0, "is_outproj_norm": True}])
def test_state_dict_layout(kw):
    m = HJMamba3(64, d_state=32, headdim=16, **kw)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == mamba_layout(64, d_state=32, headdim=16, **kw)
    m.load_state_dict({k: torch.randn(s) for k, s in got.items()}, strict=True)


@pytest.fixture
def mamba_ssm_mamba3():
    """mamba_ssm.modules.mamba3 (and its gated RMSNorm module) imported on a CPU, with empty
    stand-ins for mamba-ssm's compiled modules; all of it is taken out of sys.modules
    afterwards, so later tests (transformers' Mamba) do not pick mamba-ssm's CUDA kernels."""
    before = set(sys.modules)
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import mamba_ssm.modules.mamba3 as M
    from mamba_ssm.ops.triton import layernorm_gated as LG
    yield M, LG
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("mamba_ssm", "selective_scan_cuda", "causal_conv1d_cuda"):
            del sys.modules[name]


@pytest.mark.skipif(not HAVE_MAMBA, reason="mamba-ssm is not installed (CI installs it)")
@pytest.mark.parametrize("kw", [{}, {"ngroups": 2, "is_outproj_norm": True},
                                {"rope_fraction": 1.0}])
def test_loads_mamba_ssm_mamba3_and_matches_its_forward(monkeypatch, mamba_ssm_mamba3, kw):
    """mamba-ssm's own Mamba3.forward on CPU, with its two GPU-only calls replaced by pure
    torch: the Triton RMSNorm by its ``rms_norm_ref``, the Mamba-3 kernel by hjseq's
    sequential ``mamba3_siso`` reference (tested against mamba-ssm's test reference in
    tests/ops/test_mamba3_siso.py). So this checks the block around the op: split order,
    norms, biases, A floor, Δ, angles, gate, projections."""
    M, LG = mamba_ssm_mamba3
    monkeypatch.setattr(M, "mamba3_siso_combined",
                        lambda **a: mamba3_siso(**a, backend="ref"))
    monkeypatch.setattr(LG.RMSNorm, "forward", lambda self, x, z=None: LG.rms_norm_ref(
        x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
        norm_before_gate=self.norm_before_gate))
    torch.manual_seed(0)
    ref = M.Mamba3(32, d_state=16, headdim=8, chunk_size=4, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ours = HJMamba3(32, d_state=16, headdim=8, chunk_size=4, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    u = torch.randn(2, 11, 32)
    with torch.no_grad():
        want = ref(u)
        for backend in ("auto", "loop"):
            ours.backend = backend
            got = ours(u)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trapezoidal", [True, False])
def test_paths_agree_with_gradients(trapezoidal):
    """The fused op (cpu and its sequential ref), the structural fused path (ssd for λ = 1,
    linear_scan for the trapezoid) and the engine's loop: outputs, the four final states
    and the gradients of every parameter, the input and the initial state (float64)."""
    m = small(trapezoidal)
    u = torch.randn(2, 7, 32, dtype=f64, requires_grad=True)
    s0 = tuple((0.5 * torch.randn_like(t)).requires_grad_() for t in m.allocate_state(2))
    params = list(m.parameters())
    results = {}
    for path in ("cpu", "ref", "structural", "loop"):
        from hjseq import engine
        if path == "structural":
            key = (type(m.spec.hamiltonian), m.spec.scheme, HJMamba3)
            kernel = engine._CLOSED_FORM.pop(key)
            try:
                m.backend = "auto"
                assert m.fused_path() == ("linear_scan" if trapezoidal else "ssd")
                y, s = m(u, s0, return_final_state=True)
            finally:
                engine._CLOSED_FORM[key] = kernel
        else:
            m.backend = path
            assert m.fused_path() == ("loop" if path == "loop" else "closed_form")
            y, s = m(u, s0, return_final_state=True)
        g = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=f64)).sum()
                   for t in (y, *s))
        wrt = [u, *s0, *params]  # (λ = 1: the k, v states do not enter; zero gradient)
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        results[path] = (y, *s, *(torch.zeros_like(w) if g is None else g
                                  for g, w in zip(grads, wrt)))
    for path in ("ref", "structural", "loop"):
        for i, (a, b) in enumerate(zip(results["cpu"], results[path])):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-11, msg=f"{path} item {i}")


def test_viscosity_noise_runs_the_structural_path():
    """ε > 0 in training: the fused op declines (no noise term) and the linear_scan path
    adds √(2εΔ)ξ to the state, as the loop does with the same draws."""
    m = small()
    m.eps = 1e-3
    m.train()
    u = torch.randn(1, 5, 32, dtype=f64)
    torch.manual_seed(3)
    noisy = m(u)
    m.backend = "loop"
    torch.manual_seed(3)
    torch.testing.assert_close(m(u), noisy, rtol=1e-10, atol=1e-12)
    m.eval()
    assert (m(u) - noisy).abs().max() > 1e-6


@pytest.mark.parametrize("dtype", [f64, torch.float32])
def test_step_equals_forward_and_state_passing(dtype):
    m = small(dtype=dtype, ngroups=2)
    u = torch.randn(2, 6, 32, dtype=dtype)
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == f64 else dict(rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        y, final = m(u, return_final_state=True)
        state = None
        for t in range(6):
            yt, state = m.step(u[:, t], state)
            torch.testing.assert_close(yt, y[:, t], **tol)
        for a, b in zip(state, final):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, **tol)
        y1, s1 = m(u[:, :4], return_final_state=True)
        y2, s2 = m(u[:, 4:], s1, return_final_state=True)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y, **tol)
        for a, b in zip(s2, final):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("trapezoidal", [False, True])
def test_characteristics_orders_euler_b_and_exp_trapezoidal(trapezoidal):
    """The discrete trajectory against the per-token characteristic ODE of the rotating
    Hamiltonian: euler_b (λ = 1, input held over the token) is first order; Mamba-3's
    exp_trapezoidal at λ = ½ (input interpolated across the token) is second order."""
    m = small(trapezoidal, d_state=8, headdim=4, expand=0.25)
    with torch.no_grad():
        m.dt_bias.add_(1.0)  # Δ ≈ 1: the discretization error is well above round-off
        if trapezoidal:  # λ = σ(0) = ½: the trapezoid rule proper
            H, d_in, NG = m.nheads, m.d_inner, m.d_state * m.ngroups
            start = 2 * d_in + 2 * NG + 2 * H
            m.in_proj.weight[start:start + H] = 0.0
    u = torch.randn(1, 4, 32, dtype=f64)
    rep = compare(m, u, refinements=(1, 2, 4, 8))
    want = 2 if trapezoidal else 1
    assert rep.declared_order == want and abs(rep.observed_order - want) < 0.25
    e = rep.refinement_error
    assert e[0] > e[1] > e[2] > e[3] > 0
    with torch.no_grad():  # the trajectory the solver saw is the block's own
        torch.testing.assert_close(rep.discrete[:, -1].reshape(m.allocate_state(1)[1].shape),
                                   m(u, return_final_state=True)[1][1], rtol=1e-10, atol=1e-12)


def test_irregular_time_multiplies_delta():
    """dt (B, L) multiplies Δ (so ADT and the angle advance) in the op; dt = 1 changes
    nothing; stepping with per-token dt equals the forward; the loop refuses dt."""
    m = small()
    u = torch.randn(2, 6, 32, dtype=f64)
    ts = 0.2 + 2 * torch.rand(2, 6, dtype=f64)
    with torch.no_grad():
        y, final = m(u, return_final_state=True, dt=ts)
        pr = m.project(u)
        args = m.op_args(pr)
        scale = ts[:, None, :]  # (B, 1, L) against DT, ADT (B, H, L)
        args.update(DT=args["DT"] * scale, ADT=args["ADT"] * scale)
        want, *want_final = mamba3_siso(**args, return_final_states=True, backend="ref")
        torch.testing.assert_close(y, m.output(want, pr["z"], u.dtype), rtol=1e-10, atol=1e-11)
        for a, b in zip(final, want_final):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
        torch.testing.assert_close(m(u, dt=torch.ones(2, 6, dtype=f64)), m(u),
                                   rtol=1e-12, atol=1e-12)
        state = None
        for t in range(6):
            yt, state = m.step(u[:, t], state, dt=ts[:, t])
            torch.testing.assert_close(yt, y[:, t], rtol=1e-10, atol=1e-11)
    m.backend = "loop"
    with pytest.raises(ValueError, match="irregular time"):
        m(u, dt=ts)


def test_hjlm_kind_mamba3():
    model = HJLM({"d_model": 32, "blocks": [
        {"kind": "mamba3", "d_state": 16, "headdim": 8, "chunk_size": 8}, {"kind": "lse"}]})
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        logits = model(ids)
        state = None
        for t in range(9):
            lt, state = model.step(ids[:, t], state)
        torch.testing.assert_close(lt, logits[:, -1], rtol=1e-4, atol=1e-4)


def test_validation():
    with pytest.raises(ValueError, match="SISO"):
        HJMamba3(32, is_mimo=True)
    with pytest.raises(ValueError, match="multiple of headdim"):
        HJMamba3(30, headdim=8)
    with pytest.raises(ValueError, match="rope_fraction"):
        HJMamba3(32, headdim=8, rope_fraction=0.25)
    with pytest.raises(ValueError, match="ngroups"):
        HJMamba3(32, headdim=8, ngroups=3)
    m = HJMamba3(32, d_state=16, headdim=8)
    with pytest.raises(ValueError, match="state 'ssm_state' must have shape"):
        m(torch.randn(1, 3, 32), (torch.zeros(1, 8, 4), torch.zeros(1, 8, 8, 8),
                                  torch.zeros(1, 8, 16), torch.zeros(1, 8, 8)))
    with pytest.raises(ValueError, match="backend"):
        HJMamba3(32, d_state=16, headdim=8, backend="gpu")
