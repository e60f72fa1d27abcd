"""HJRNN / HJGRU / HJLSTM: torch equivalence, engine paths, state API, noise, characteristics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hjseq import engine
from hjseq.nn import HJGRU, HJLSTM, HJRNN
from hjseq.ops import BackendUnavailable, available

f64 = torch.float64
PAIRS = [(HJRNN, torch.nn.RNN), (HJGRU, torch.nn.GRU), (HJLSTM, torch.nn.LSTM)]
IDS = ["rnn", "gru", "lstm"]


def _flat(state):
    return torch.cat([s.reshape(-1) for s in state]) if isinstance(state, tuple) else state.reshape(-1)


def _random_state(cls, B, H):
    h = torch.randn(B, H, dtype=f64)
    return (h, torch.randn(B, H, dtype=f64)) if cls is HJLSTM else h


def _torch_state(cls, B, H):
    """A random hx in torch's format: (1, B, H), or a (h_0, c_0) tuple for the LSTM."""
    h = torch.randn(1, B, H, dtype=f64)
    return (h, torch.randn(1, B, H, dtype=f64)) if cls is HJLSTM else h


def _tflat(hn):
    return torch.cat([t.reshape(-1) for t in hn]) if isinstance(hn, tuple) else hn.reshape(-1)


def _shapes(hn):
    return [tuple(t.shape) for t in hn] if isinstance(hn, tuple) else [tuple(hn.shape)]


@settings(max_examples=8, deadline=None)
@given(which=st.integers(0, 2), B=st.integers(1, 3), L=st.integers(1, 6), I=st.integers(1, 5),
       H=st.integers(1, 6), bias=st.booleans(), batch_first=st.booleans(),
       with_state=st.booleans(), backend=st.sampled_from(["loop", "auto"]))
def test_from_torch_is_a_drop_in(which, B, L, I, H, bias, batch_first, with_state, backend):
    """The exact call the torch module takes, in its own layout: outputs, final states
    (shape and values) and every gradient equal torch's."""
    cls, tcls = PAIRS[which]
    torch.manual_seed(B * 100 + L * 10 + H)
    ref = tcls(I, H, bias=bias, batch_first=batch_first).to(f64)
    blk = cls.from_torch(ref, backend=backend)
    x = torch.randn(*((B, L, I) if batch_first else (L, B, I)), dtype=f64, requires_grad=True)
    hx = _torch_state(cls, B, H) if with_state else None

    out, hn = blk(x, hx)
    tout, thn = ref(x, hx)
    assert out.shape == tout.shape and _shapes(hn) == _shapes(thn)
    assert (out - tout).abs().max() <= 1e-10
    assert (_tflat(hn) - _tflat(thn)).abs().max() <= 1e-10

    w_out, w_fin = torch.randn_like(out), torch.randn_like(_tflat(hn))
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    g = torch.autograd.grad((out * w_out).sum() + (_tflat(hn) * w_fin).sum(),
                            [x, *[getattr(blk, n) for n in names]])
    tg = torch.autograd.grad((tout * w_out).sum() + (_tflat(thn) * w_fin).sum(),
                             [x, *[getattr(ref, n + "_l0") for n in names]])
    for a, b in zip(g, tg):
        assert (a - b).abs().max() <= 1e-10


@pytest.mark.parametrize("cls, tcls", PAIRS, ids=IDS)
def test_from_torch_unbatched_and_hjseq_api(cls, tcls):
    ref = tcls(3, 4).to(f64)
    blk = cls.from_torch(ref)
    x = torch.randn(5, 3, dtype=f64)                      # unbatched (L, I), as torch takes
    out, hn = blk(x)
    tout, thn = ref(x)
    assert out.shape == tout.shape and _shapes(hn) == _shapes(thn)
    assert (out - tout).abs().max() <= 1e-12 and (_tflat(hn) - _tflat(thn)).abs().max() <= 1e-12
    # torch_api=False: hjseq's call and (B, H) states, in the module's (L, B, I) layout
    seq_first = tcls(3, 4, batch_first=False).to(f64)
    plain = cls.from_torch(seq_first, torch_api=False)
    xs = torch.randn(6, 2, 3, dtype=f64)
    y, final = plain(xs, return_final_state=True)
    ty, thn = seq_first(xs)
    assert y.shape == ty.shape and (y - ty).abs().max() <= 1e-12
    ref_final = (thn[0][0], thn[1][0]) if cls is HJLSTM else thn[0]
    assert (_tflat(final) - _tflat(ref_final)).abs().max() <= 1e-12
    with pytest.raises(ValueError, match="h_0 must have shape"):
        blk(torch.randn(2, 5, 3, dtype=f64).transpose(0, 1),
            torch.randn(2, 4, dtype=f64) if cls is not HJLSTM else
            (torch.randn(2, 4, dtype=f64), torch.randn(2, 4, dtype=f64)))


def _named_backends():
    return [name for name, why in available("recurrent_scan").items() if why is None]


@pytest.mark.parametrize("cls", [c for c, _ in PAIRS], ids=IDS)
def test_reference_loop_equals_fused_op(cls):
    """The engine's loop (Hamiltonian velocity + scheme step) == recurrent_scan, every backend
    that runs here, at Δ ≠ 1 with noise where the backend supports it, else at Δ = 1."""
    x = torch.randn(3, 5, 4, dtype=f64)
    s0 = _random_state(cls, 3, 6)
    ran = []
    for backend in ["auto", *_named_backends()]:
        for dt, eps in ((0.4, 0.3), (1.0, 0.0)):
            torch.manual_seed(0)
            loop_blk = cls(4, 6, dt=dt, eps=eps, backend="loop").to(f64)
            fused = cls(4, 6, dt=dt, eps=eps, backend=backend).to(f64)
            fused.load_state_dict(loop_blk.state_dict())
            torch.manual_seed(1)
            o1, f1 = loop_blk(x, s0, return_final_state=True)
            torch.manual_seed(1)
            try:
                o2, f2 = fused(x, s0, return_final_state=True)
            except BackendUnavailable:
                assert backend != "auto"
                continue
            ran.append((backend, dt))
            assert (o1 - o2).abs().max() <= 1e-10, (backend, dt)
            assert (_flat(f1) - _flat(f2)).abs().max() <= 1e-10, (backend, dt)
            break
    assert {b for b, _ in ran} == {"auto", *_named_backends()}
    assert ("auto", 0.4) in ran


@pytest.mark.parametrize("cls", [c for c, _ in PAIRS], ids=IDS)
@pytest.mark.parametrize("backend", ["loop", "auto"])
def test_step_and_chunks_equal_forward(cls, backend):
    blk = cls(3, 5, dt=0.7, backend=backend).to(f64)
    x = torch.randn(2, 7, 3, dtype=f64)
    s0 = _random_state(cls, 2, 5)
    out, final = blk(x, s0, return_final_state=True)
    # token by token
    state, ys = s0, []
    for t in range(7):
        y, state = blk.step(x[:, t], state)
        ys.append(y)
    assert (torch.stack(ys, 1) - out).abs().max() <= 1e-12
    assert (_flat(state) - _flat(final)).abs().max() <= 1e-12
    # two halves chained through the state
    o1, s1 = blk(x[:, :3], s0, return_final_state=True)
    o2, s2 = blk(x[:, 3:], s1, return_final_state=True)
    assert (torch.cat([o1, o2], 1) - out).abs().max() <= 1e-12
    assert (_flat(s2) - _flat(final)).abs().max() <= 1e-12
    # step from None is the zero state
    y0, _ = blk.step(x[:, 0])
    assert (y0 - blk(x[:, :1])[:, 0]).abs().max() == 0


@pytest.mark.parametrize("cls", [c for c, _ in PAIRS], ids=IDS)
@pytest.mark.parametrize("backend,dt", [("auto", 1.0), ("loop", 0.6)])
def test_gradcheck_tiny(cls, backend, dt):
    blk = cls(2, 3, dt=dt, backend=backend).to(f64)
    names = [n for n, _ in blk.named_parameters()]
    x = torch.randn(2, 3, 2, dtype=f64, requires_grad=True)
    s0 = _random_state(cls, 2, 3)
    s0 = tuple(s.requires_grad_() for s in s0) if isinstance(s0, tuple) else s0.requires_grad_()
    s0_list = list(s0) if isinstance(s0, tuple) else [s0]

    def fn(x, *rest):
        state = tuple(rest[:len(s0_list)]) if cls is HJLSTM else rest[0]
        params = dict(zip(names, rest[len(s0_list):]))
        out, final = torch.func.functional_call(blk, params, (x, state, True))
        return out, *(final if isinstance(final, tuple) else (final,))

    params = [p.detach().clone().requires_grad_() for p in blk.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *s0_list, *params))


def test_noise_only_in_training_and_seeded():
    eps, dt = 0.3, 1.0
    blk = HJRNN(2, 4, dt=dt, eps=eps, backend="loop").to(f64)
    for p in blk.parameters():  # zero field: h_k = h + Δ(−h) + noise = noise at Δ = 1
        torch.nn.init.zeros_(p)
    x = torch.randn(3, 5, 2, dtype=f64)
    torch.manual_seed(7)
    out = blk(x)
    torch.manual_seed(7)
    expected = (2 * eps * dt) ** 0.5 * torch.randn(3, 5, 4, dtype=f64)
    assert (out - expected).abs().max() <= 1e-15
    torch.manual_seed(7)
    assert torch.equal(blk(x), out)
    torch.manual_seed(8)
    assert not torch.allclose(blk(x), out)
    blk.eval()
    assert blk(x).abs().max() == 0  # deterministic (and here zero) in eval mode


@pytest.mark.parametrize("cls", [c for c, _ in PAIRS], ids=IDS)
def test_noise_goes_to_flow_state_with_scale(cls):
    """Training with ε > 0 == eval trajectory perturbed by √(2εΔ)ξ on the flow state
    (h for RNN/GRU, c for LSTM), same draws on the loop and the fused path."""
    eps, dt = 0.05, 0.5
    blk = cls(3, 4, dt=dt, eps=eps, backend="loop").to(f64)
    fused = cls(3, 4, dt=dt, eps=eps, backend="auto").to(f64)
    fused.load_state_dict(blk.state_dict())
    x = torch.randn(2, 6, 3, dtype=f64)
    torch.manual_seed(3)
    _, traj = blk.trajectory(x)
    torch.manual_seed(3)
    xi = (2 * eps * dt) ** 0.5 * torch.randn(2, 6, 4, dtype=f64)
    ch = blk.eval().characteristics(x)
    blk.train()
    # the held GRU update gate and LSTM gates of token k depend on h_{k-1}, which the noise
    # has moved: only token 0 shares them with the noise-free run
    for k in range(6 if cls is HJRNN else 1):
        pred = ch.discrete_step(k, traj[:, k]) + xi[:, k]
        assert (pred - traj[:, k + 1]).abs().max() <= 1e-12
    torch.manual_seed(3)
    o_loop = blk(x)
    torch.manual_seed(3)
    assert (fused(x) - o_loop).abs().max() <= 1e-12


@pytest.mark.parametrize("cls", [c for c, _ in PAIRS], ids=IDS)
def test_characteristics_view(cls):
    blk = cls(3, 4, dt=0.5).to(f64)
    x = torch.randn(2, 5, 3, dtype=f64)
    s0 = _random_state(cls, 2, 4)
    ch = blk.characteristics(x, s0)
    out = blk(x, s0)
    assert ch.states.shape == (2, 6, 4) and ch.scheme in ("euler", "gated_euler") and ch.order == 1
    assert (ch.outputs - out).abs().max() <= 1e-13
    assert (ch.states[:, 0] - (s0[1] if cls is HJLSTM else s0)).abs().max() == 0
    for k in range(5):
        h = ch.states[:, k]
        step = ch.discrete_step(k, h)
        assert (step - ch.states[:, k + 1]).abs().max() <= 1e-13
        assert (ch.substep(k, h, 1) - step).abs().max() == 0
        # Euler in normalised token time: one step of size 1 on dh/dτ = rhs
        assert (h + ch.rhs(k, h) - step).abs().max() <= 1e-13
        assert (ch.readout(k, ch.states[:, k + 1]) - out[:, k]).abs().max() <= 1e-13
    # the step is held at the token's start: off the trajectory, the GRU's held gate differs
    # from the gate the block would compute at h
    if cls is HJGRU:
        off = ch.states[:, 1] + 0.3
        held = ch.discrete_step(0, off)
        assert (held - off - ch.rhs(0, off)).abs().max() <= 1e-13
        d = ch._drives[0]
        own = blk.spec.hamiltonian.velocity(0.0, off, d) * blk.spec.step(0.0, off, d) + off
        assert (held - own).abs().max() > 1e-6
    # observed order: m Euler substeps converge to the token's flow at rate 1/m
    h = ch.states[:, 2].detach()
    with torch.no_grad():
        ref = ch.substep(2, h, 2048)
        ms = [4, 8, 16, 32]
        errs = [float((ch.substep(2, h, m) - ref).abs().max()) for m in ms]
    assert abs(np.polyfit(np.log(ms), np.log(errs), 1)[0] + 1) < 0.15, errs
    with pytest.raises(ValueError, match="h must be"):
        ch.rhs(0, h[:, :3])
    with pytest.raises(IndexError, match="k must be"):
        ch.discrete_step(5, h)
    with pytest.raises(ValueError, match="m"):
        ch.substep(0, h, 0)


def test_closed_form_kernel_serves_only_its_exact_computation():
    """A kernel registered for (Hamiltonian, scheme, block) never runs a subclass of either;
    a declining kernel falls to the loop under "auto" and raises under a named backend."""
    calls = []

    class Marker(HJRNN):
        pass

    from hjseq.hamiltonians import ElmanRNN

    class MyH(ElmanRNN):
        pass

    def kernel(block, x, state, noise, backend):
        calls.append(backend)
        raise BackendUnavailable("declined for the test")

    engine.register_kernel(MyH, "euler", Marker, kernel)
    try:
        blk = Marker(2, 3).to(f64)
        assert engine.find_kernel(blk) is None and blk.fused_path() == "loop"
        blk.spec.hamiltonian = MyH()
        assert engine.find_kernel(blk) is kernel
        x = torch.randn(1, 2, 2, dtype=f64)
        out = blk(x)  # "auto": the kernel declines -> the reference loop
        assert calls == ["auto"] and out.shape == (1, 2, 3)
        blk.backend = "cpu"
        with pytest.raises(BackendUnavailable, match="declined"):
            blk(x)
        plain = HJRNN(2, 3).to(f64)
        plain.spec.hamiltonian = MyH()  # the exact block class differs: not this kernel
        assert engine.find_kernel(plain) is None
    finally:
        engine._CLOSED_FORM.pop((MyH, "euler", Marker))


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("cls", [c for c, _ in PAIRS], ids=IDS)
def test_bad_input_errors_name_the_argument(cls):
    blk = cls(3, 4).to(f64)
    x = torch.randn(2, 5, 3, dtype=f64)
    with pytest.raises(ValueError, match="x must have rank 3"):
        blk(x[0])
    with pytest.raises(ValueError, match=r"x must be \(B, L, 3\)"):
        blk(torch.randn(2, 5, 4, dtype=f64))
    with pytest.raises(TypeError, match="x has dtype"):
        blk(x.float())
    with pytest.raises(ValueError, match="L = 0"):
        blk(x[:, :0])
    bad_batch = _random_state(cls, 3, 4)
    with pytest.raises(ValueError, match="state 'h' must have shape"):
        blk(x, bad_batch)
    with pytest.raises(ValueError, match="must have shape"):
        blk(x, _random_state(cls, 2, 5))
    if cls is HJLSTM:
        with pytest.raises(ValueError, match="tuple"):
            blk(x, torch.zeros(2, 4, dtype=f64))
    else:
        with pytest.raises(ValueError, match="tensor"):
            blk(x, (torch.zeros(2, 4, dtype=f64),))
    with pytest.raises(TypeError, match="state 'h' must have dtype"):
        good = _random_state(cls, 2, 4)
        blk(x, tuple(s.float() for s in good) if isinstance(good, tuple) else good.float())
    with pytest.raises(ValueError, match="x_t must be a"):
        blk.step(x)
    with pytest.raises(ValueError, match="dt"):
        cls(3, 4, dt=0.0)
    with pytest.raises(ValueError, match="dt"):
        cls(3, 4, dt=-0.5)
    with pytest.raises(ValueError, match="eps"):
        cls(3, 4, eps=-1e-3)
    with pytest.raises(ValueError, match="hidden_size"):
        cls(3, 0)
    chk = cls(3, 4, check_finite=True).to(f64)
    with torch.no_grad():
        chk.weight_hh[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight_hh"):
        chk(x)
    with pytest.raises(ValueError, match="x contains NaN"):
        cls(3, 4, check_finite=True).to(f64)(torch.full((1, 2, 3), float("nan"), dtype=f64))


@pytest.mark.parametrize("cls,tcls", PAIRS, ids=IDS)
def test_from_torch_rejects_unsupported_modules(cls, tcls):
    with pytest.raises(ValueError, match="num_layers"):
        cls.from_torch(tcls(3, 4, num_layers=2))
    with pytest.raises(ValueError, match="bidirectional"):
        cls.from_torch(tcls(3, 4, bidirectional=True))
    with pytest.raises(TypeError, match="module must be a torch.nn"):
        cls.from_torch(torch.nn.Linear(3, 4))
    if tcls is torch.nn.LSTM:
        with pytest.raises(ValueError, match="proj_size"):
            cls.from_torch(tcls(3, 4, proj_size=2))
    if tcls is torch.nn.RNN:
        with pytest.raises(ValueError, match="nonlinearity"):
            cls.from_torch(tcls(3, 4, nonlinearity="relu"))


def test_nn_exports_every_block():
    import hjseq.nn as hnn
    for name in ("HJRNN", "HJGRU", "HJLSTM", "HJMamba", "HJAttention", "LSELayer"):
        assert isinstance(getattr(hnn, name), type), name
    with pytest.raises(AttributeError, match="HJTransformer"):
        hnn.HJTransformer
