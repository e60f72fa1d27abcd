"""Open specs: a Hamiltonian a user writes is as correct, as fast and as trainable as hjseq's.

- the kernel follows from what the spec declares, never from the class alone: a subclass of
  every shipped Hamiltonian whose velocity changes runs the same under "auto" and "loop";
- registration happens once at ``import hjseq``, so import order changes nothing;
- the spec is part of the block's module tree (parameters, buffers, learnable ε);
- an ``affine`` spec runs through the generic ``linear_scan`` path under every linear
  scheme and backend, with states, gradients and noise;
- contract errors name the hook and what it must return.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import hjseq
from hjseq import engine
from hjseq.hamiltonians import GRU, LSTM, ElmanRNN, HeadLinearSSM, LinearSSM
from hjseq.nn import HJGRU, HJLSTM, HJMamba, HJMamba2, HJMamba3, HJRNN, RecurrentBlock
from hjseq.nn.mamba3 import RotatingSSM
from hjseq.ops import available
from hjseq.spec import ConstantStep, DriveStep, Hamiltonian, HJSpec, SoftplusStep

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from examples.mingru import MinGRU  # noqa: E402

f64 = torch.float64


# ----------------------------------------------------------------------------- 1. kernels by structure

class LeakyElman(ElmanRNN):
    def velocity(self, t, h, drive):
        return super().velocity(t, h, drive) - 0.7 * h


class SlowGRU(GRU):
    def velocity(self, t, h, drive):
        return 0.5 * super().velocity(t, h, drive)


class ForgetfulLSTM(LSTM):  # changes velocity only: its inherited affine() no longer counts
    def velocity(self, t, h, drive):
        return super().velocity(t, h, drive) - 0.3 * h


class LeakySSM(LinearSSM):  # changes both, consistently: still affine
    def velocity(self, t, h, drive):
        return super().velocity(t, h, drive) - 20.0 * h

    def affine(self, t, drive):
        a, b = super().affine(t, drive)
        return a - 20.0, b


class LeakyHeads(HeadLinearSSM):  # restates the head form: still the ssd structure
    def head_affine(self, t, drive):
        a, x, B = super().head_affine(t, drive)
        return a - 3.0, x, B


class LeakyRotating(RotatingSSM):
    def head_affine(self, t, drive):
        a, x, B = super().head_affine(t, drive)
        return a - 3.0, x, B


def _ssm_block(block_cls):
    if block_cls is HJMamba:
        return HJMamba(4, d_state=3, d_conv=3, expand=2, dtype=f64), 4
    if block_cls is HJMamba2:
        return HJMamba2(16, d_state=4, headdim=8, chunk_size=4, dtype=f64), 16
    return HJMamba3(16, d_state=8, headdim=8, dtype=f64), 16


@pytest.mark.parametrize("block_cls, ham_cls, path, shipped_path", [
    (HJRNN, LeakyElman, "loop", "closed_form"), (HJGRU, SlowGRU, "loop", "closed_form"),
    (HJLSTM, ForgetfulLSTM, "loop", "closed_form"),
    (HJMamba, LeakySSM, "linear_scan", "closed_form"),
    (HJMamba2, LeakyHeads, "ssd", "ssd"),
    (HJMamba3, LeakyRotating, "linear_scan", "closed_form")],
    ids=["rnn", "gru", "lstm", "mamba", "mamba2", "mamba3"])
def test_subclassed_hamiltonian_never_meets_the_shipped_kernel(block_cls, ham_cls, path,
                                                              shipped_path):
    torch.manual_seed(0)
    if block_cls in (HJMamba, HJMamba2, HJMamba3):
        blk, width = _ssm_block(block_cls)
        x = torch.randn(2, 7, width, dtype=f64)
    else:
        blk = block_cls(3, 5).to(f64)
        x = torch.randn(2, 7, 3, dtype=f64)
    assert blk.fused_path() == shipped_path
    shipped = blk(x)
    blk.spec.hamiltonian = ham_cls()
    assert blk.fused_path() == path
    outs = {}
    for backend in ("auto", "ref", "loop"):
        blk.backend = backend
        outs[backend] = blk(x, return_final_state=True)
    for backend in ("auto", "ref"):
        assert (outs[backend][0] - outs["loop"][0]).abs().max() <= 1e-12
    assert (outs["loop"][0] - shipped).abs().max() > 1e-6  # the subclass really differs


def test_the_issue_case_subclass_in_a_subclassed_block():
    class MyRNN(HJRNN):
        pass

    blk = MyRNN(3, 4).to(f64)
    blk.spec.hamiltonian = LeakyElman()
    x = torch.randn(2, 9, 3, dtype=f64)
    ref = blk(x)
    blk.backend = "loop"
    assert (blk(x) - ref).abs().max() <= 1e-12


def test_subclass_changing_velocity_is_refused_an_affine_scheme():
    blk = HJMamba(4, d_state=3, dtype=f64)

    class BadSSM(LinearSSM):
        def velocity(self, t, h, drive):
            return super().velocity(t, h, drive) - h

    with pytest.raises(ValueError, match="euler_b.*needs.*'affine'.*restate affine"):
        blk.spec.hamiltonian = BadSSM()


# ----------------------------------------------------------------------------- 2. one registration

def test_registration_is_complete_at_import_and_independent_of_order():
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        import hjseq
        from hjseq import engine
        from hjseq.hamiltonians import LinearSSM
        from hjseq.nn import RecurrentBlock
        from hjseq.spec import HJSpec, SoftplusStep
        names = sorted((h.__name__, s, b.__name__) for h, s, b in engine._CLOSED_FORM)
        assert ("LinearSSM", "euler_b", "HJMamba") in names, names
        assert ("ElmanRNN", "euler", "HJRNN") in names, names

        class S4D(RecurrentBlock):      # a user's block on the shipped LinearSSM
            def __init__(self):
                super().__init__()
                self.input_size = 3
                self.A = torch.nn.Parameter(-torch.rand(3, 2, dtype=torch.float64) - 0.5)
                self.Bv = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
                self.spec = HJSpec(LinearSSM(), step=SoftplusStep(), scheme="zoh")
            def state_shapes(self):
                return ((3, 2),)
            def prepare(self, x, state):
                B = self.Bv.expand(x.shape[0], x.shape[1], 2)
                return {{"u": x, "B": B, "delta": x}}, {{"A": self.A}}, state

        torch.manual_seed(0)
        blk, x = S4D(), torch.randn(2, 5, 3, dtype=torch.float64)
        before = blk(x)
        from hjseq.nn import HJMamba           # touching the shipped Mamba changes nothing
        HJMamba(4)
        after = blk(x)
        blk.backend = "loop"
        assert (before - after).abs().max() == 0 and (after - blk(x)).abs().max() < 1e-12
        print("ok", blk.fused_path())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "loop"]  # backend was set to loop last


# ----------------------------------------------------------------------------- 3. module tree

class Damped(Hamiltonian):
    """``F = −exp(log_rate) ⊙ h + u``: a learnable decay rate owned by the Hamiltonian."""

    def __init__(self, size):
        super().__init__()
        self.log_rate = nn.Parameter(torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))

    def affine(self, t, drive):
        return -torch.exp(self.log_rate), self.scale * drive["u"]


class DampedBlock(RecurrentBlock):
    def __init__(self, size, eps=0.0, step=None, scheme="zoh"):
        super().__init__()
        self.input_size = size
        self.spec = HJSpec(Damped(size), viscosity=eps, step=step, scheme=scheme)

    def state_shapes(self):
        return ((self.input_size,),)

    def prepare(self, x, state):
        return {"u": x}, {}, state


def test_spec_parameters_buffers_and_learnable_eps_live_in_the_block():
    blk = DampedBlock(3, eps=nn.Parameter(torch.full((3,), 0.05)),
                      step=SoftplusStep(bias=nn.Parameter(torch.zeros(3)), key="u"))
    names = dict(blk.named_parameters())
    assert {"spec.hamiltonian.log_rate", "spec.viscosity", "spec.step.bias"} <= set(names)
    assert {"spec.hamiltonian.log_rate", "spec.hamiltonian.scale", "spec.viscosity",
            "spec.step.bias"} <= set(blk.state_dict())
    blk.double()
    assert blk.spec.hamiltonian.log_rate.dtype == f64 and blk.spec.hamiltonian.scale.dtype == f64
    assert blk.eps.dtype == f64 and blk.spec.step.bias.dtype == f64
    opt = torch.optim.SGD(blk.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in blk.named_parameters()}
    blk.train()
    torch.manual_seed(0)
    loss = blk(torch.randn(4, 6, 3, dtype=f64)).pow(2).mean()
    loss.backward()
    opt.step()
    for name, p in blk.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
        assert (p.detach() - before[name]).abs().max() > 0, name
    # a new learnable ε replaces the old one in the tree
    blk.eps = nn.Parameter(torch.full((3,), 0.2, dtype=f64))
    assert dict(blk.named_parameters())["spec.viscosity"].detach()[0] == 0.2
    blk.eps = 0.0
    assert "spec.viscosity" not in dict(blk.named_parameters())


# ----------------------------------------------------------------------------- 4. generic fused path

def _named(op):
    return [n for n, why in available(op).items() if why is None and n != "ref"]


@pytest.mark.parametrize("scheme", ["gated_euler", "euler", "zoh", "euler_b"])
@pytest.mark.parametrize("backend", ["auto", "ref", *_named("linear_scan")])
def test_affine_spec_runs_linear_scan_equal_to_loop(scheme, backend):
    torch.manual_seed(1)
    blk = MinGRU(4, 6, dt=0.7, scheme=scheme).to(f64)
    assert blk.fused_path() == "linear_scan"
    x = torch.randn(3, 9, 4, dtype=f64, requires_grad=True)
    h0 = torch.randn(3, 6, dtype=f64, requires_grad=True)
    results = {}
    w = torch.randn(3, 9, 6, dtype=f64)
    for b in (backend, "loop"):
        blk.backend = b
        y, hT = blk(x, initial_state=h0, return_final_state=True)
        grads = torch.autograd.grad((y * w).sum() + hT.pow(2).sum(),
                                    [x, h0, *blk.parameters()])
        results[b] = (y, hT, grads)
    (y, hT, g), (yl, hTl, gl) = results[backend], results["loop"]
    assert (y - yl).abs().max() <= 1e-12 and (hT - hTl).abs().max() <= 1e-12
    for a, c in zip(g, gl):
        assert (a - c).abs().max() <= 1e-11


def test_affine_spec_noise_is_the_same_draw_on_both_paths():
    blk = MinGRU(3, 5, eps=0.3).to(f64).train()
    x = torch.randn(2, 8, 3, dtype=f64)
    torch.manual_seed(7)
    fused = blk(x)
    blk.backend = "loop"
    torch.manual_seed(7)
    looped = blk(x)
    assert (fused - looped).abs().max() <= 1e-12
    blk.eval()
    assert (blk(x) - fused).abs().max() > 1e-3  # eval is deterministic, training was noisy


def test_affine_spec_step_decoding_equals_forward():
    blk = MinGRU(3, 5).to(f64)
    x = torch.randn(2, 6, 3, dtype=f64)
    y = blk(x)
    state = None
    for t in range(6):
        y_t, state = blk.step(x[:, t], state)
        assert (y_t - y[:, t]).abs().max() <= 1e-13


def test_fp32_and_bf16_affine_path_against_fp64_loop():
    blk = MinGRU(4, 8)
    x = torch.randn(2, 64, 4)
    ref = MinGRU(4, 8).to(f64)
    ref.load_state_dict(blk.state_dict())
    ref.backend = "loop"
    want = ref(x.to(f64))
    assert (blk(x).to(f64) - want).abs().max() <= 1e-5
    low = MinGRU(4, 8).to(torch.bfloat16)
    low.load_state_dict(blk.state_dict())
    assert (low(x.to(torch.bfloat16)).to(f64) - want).abs().max() <= 0.1


# ----------------------------------------------------------------------------- 6. contract errors

def test_contract_errors_name_the_hook():
    class NoShapes(RecurrentBlock):
        def __init__(self):
            super().__init__()
            self.input_size = 2
            self.w = nn.Parameter(torch.ones(1))
            self.spec = HJSpec(Damped(2), scheme="zoh")

        def prepare(self, x, state):
            return {"u": x}, {}, state

    with pytest.raises(NotImplementedError, match=r"state_shapes\(\) -> a tuple"):
        NoShapes()(torch.randn(1, 3, 2))

    class NoPrepare(DampedBlock):
        prepare = RecurrentBlock.prepare

    with pytest.raises(NotImplementedError, match=r"prepare\(x, state\) -> \(seq, const, state\)"):
        NoPrepare(2)(torch.randn(1, 3, 2))

    class MissingKey(DampedBlock):
        def prepare(self, x, state):
            return {"v": x}, {}, state

    for backend in ("auto", "loop"):
        blk = MissingKey(2)
        blk.backend = backend
        with pytest.raises(engine.DriveKeyError, match=r"no entry 'u'.*MissingKey.prepare"):
            blk(torch.randn(1, 3, 2))

    with pytest.raises(ValueError, match="backend must be one of"):
        HJRNN(2, 3, backend="cuda_fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        MinGRU(2, 3, backend="gpu")
    with pytest.raises(ValueError, match="scheme 'zoh' needs.*'affine'"):
        HJSpec(ElmanRNN(), scheme="zoh")

    class TorchCellHamiltonianBlock(DampedBlock):  # a torch-cell Hamiltonian in a user block
        def __init__(self):
            super().__init__(2, scheme="euler")
            self.spec.hamiltonian = ElmanRNN()

    with pytest.raises(engine.DriveKeyError, match="weight_hh"):
        TorchCellHamiltonianBlock()(torch.randn(1, 3, 2))


# ----------------------------------------------------------------------------- 8. one vocabulary

def _module_imports(path: pathlib.Path) -> set[str]:
    """hjseq modules imported at module level (not under TYPE_CHECKING, not in functions)."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("hjseq"):
                out.add(mod)
                for alias in node.names:
                    out.add(f"{mod}.{alias.name}")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hjseq"))
    return out


def test_core_modules_import_without_cycles():
    core = ["spec", "schemes", "hamiltonians", "hopf", "viscosity", "exponential"]
    graph = {f"hjseq.{m}": {d for d in _module_imports(ROOT / "hjseq" / f"{m}.py")
                            if d in {f"hjseq.{c}" for c in core}} for m in core}

    def reach(start, node, seen):
        for nxt in graph.get(node, ()):
            if nxt == start:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reach(start, nxt, seen):
                    return True
        return False

    cyclic = [m for m in graph if reach(m, m, set())]
    assert not cyclic, graph


def test_one_phi1_one_lse_one_viscosity_check_and_no_outside_documents():
    sources = {p: p.read_text() for p in (ROOT / "hjseq").rglob("*.py")}
    phi1_defs = [p for p, s in sources.items() if "def phi1(" in s]
    assert [p.name for p in phi1_defs] == ["exponential.py"]
    lse_calls = [p.name for p, s in sources.items() if "torch.logsumexp(" in s]
    assert lse_calls == ["hopf.py"], lse_calls
    eps_checks = [p.name for p, s in sources.items() if "must be >= 0 (viscosity" in s]
    assert eps_checks == [], eps_checks
    assert not [p.name for p, s in sources.items() if "DESIGN" in s]


def test_eps_zero_tie_rule_is_shared():
    from hjseq import hopf
    from hjseq.nn import LSELayer

    s = torch.tensor([[2.0, 5.0, 5.0, 1.0]], dtype=f64)
    assert torch.equal(hopf.gibbs(s, 0.0), torch.tensor([[0.0, 0.5, 0.5, 0.0]], dtype=f64))
    layer = LSELayer(1, 4, eps=0.0).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(s[0])
    pi = layer.attribution_weights(torch.zeros(1, 1, dtype=f64))
    assert torch.equal(pi, hopf.gibbs(s, 0.0))


# ----------------------------------------------------------------------------- 5. open block kinds

def test_register_block_builds_trains_and_decodes():
    from hjseq.models import HJLM, get_kind, known_kinds, register_block

    register_block("mingru_test", MinGRU)
    try:
        assert "mingru_test" in known_kinds()
        assert {"hidden_size", "dt", "eps", "scheme", "backend"} <= set(get_kind("mingru_test").options)
        model = HJLM({"d_model": 16, "blocks": [{"kind": "mingru_test", "hidden_size": 24,
                                                 "dt": 0.5}, {"kind": "mamba", "d_state": 4}]})
        model.double()
        ids = torch.randint(0, 256, (2, 10))
        logits, state = model(ids, return_state=True)
        full = model(torch.cat([ids, ids[:, :3]], dim=1))
        for t in range(3):  # step decoding continues the forward exactly
            step_logits, state = model.step(ids[:, t], state)
            assert (step_logits - full[:, 10 + t]).abs().max() <= 1e-10
        loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        cell = model.layers[0].mixer.cell
        assert cell.proj.weight.grad is not None and cell.fused_path() == "linear_scan"
    finally:
        from hjseq.models import kinds
        kinds._KINDS.pop("mingru_test")


def test_config_kinds_are_validated_against_the_class():
    from hjseq.models import ConfigError, load_config

    cfg = load_config({"d_model": 8, "blocks": [{"kind": "examples.mingru:MinGRU", "dt": 0.5}]})
    assert cfg.model.blocks[0].kind == "examples.mingru:MinGRU"
    with pytest.raises(ConfigError, match=r"blocks\[0\]\.width: unknown option.*dt"):
        load_config({"d_model": 8, "blocks": [{"kind": "examples.mingru:MinGRU", "width": 3}]})
    with pytest.raises(ConfigError, match="no 'Nope'"):
        load_config({"d_model": 8, "blocks": [{"kind": "examples.mingru:Nope"}]})
    with pytest.raises(ConfigError, match="unknown block kind 'mingru'.*module:ClassName"):
        load_config({"d_model": 8, "blocks": [{"kind": "mingru"}]})
    with pytest.raises(ConfigError, match="expected float"):
        load_config({"d_model": 8, "blocks": [{"kind": "examples.mingru:MinGRU", "dt": "big"}]})


def test_train_and_generate_a_user_kind_from_toml(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("".join(p.read_text() for p in sorted((ROOT / "hjseq").glob("*.py"))))
    cfg = tmp_path / "mingru.toml"
    cfg.write_text(textwrap.dedent("""
        [model]
        d_model = 16
        blocks = [{kind = "examples.mingru:MinGRU", hidden_size = 24}, {kind = "examples.mingru:MinGRU"}]
        [train]
        steps = 3
        batch_size = 2
        seq_len = 32
        eval_interval = 3
        eval_batches = 1
        log_interval = 1
        checkpoint_interval = 3
        sample_chars = 10
        threads = 1
    """))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "hjseq", "train", str(cfg), "--data", str(data),
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "hjseq", "generate", "--checkpoint", str(out),
                        "--prompt", "def ", "-n", "12", "--seed", "0"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("def ") and len(r.stdout) >= 4


def test_readme_mingru_is_the_example_file():
    """README's "Write your own architecture" shows examples/mingru.py's classes verbatim."""
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "mingru.py").read_text()
    start = readme.index("class Relax(Hamiltonian):")
    end = readme.index("```", start)
    assert readme[start:end].strip() in example


# ----------------------------------------------------------------------------- head_affine -> ssd

class HeadSSM(RecurrentBlock):
    """A user's Mamba-2-like block on ``HeadLinearSSM``: x (B, L, H·P) -> y (B, L, H·P)."""

    linear_readout = "C"

    def __init__(self, heads=3, P=2, N=4, groups=1, scheme="euler_b"):
        super().__init__()
        from hjseq.hamiltonians import HeadLinearSSM

        self.H, self.P, self.N, self.G = heads, P, N, groups
        self.input_size = heads * P
        self.proj = nn.Linear(self.input_size, heads + 2 * groups * N)
        self.A_log = nn.Parameter(torch.rand(heads))
        self.spec = HJSpec(HeadLinearSSM(), step=SoftplusStep(), scheme=scheme)

    def state_shapes(self):
        return ((self.H, self.P, self.N),)

    def prepare(self, x, state):
        dt, B, C = self.proj(x).split([self.H, self.G * self.N, self.G * self.N], dim=-1)
        seq = {"x": x.unflatten(-1, (self.H, self.P)), "delta": dt,
               "B": B.unflatten(-1, (self.G, self.N)), "C": C.unflatten(-1, (self.G, self.N))}
        return seq, {"a": -torch.exp(self.A_log)}, state

    def finish(self, ys, seq):
        return ys.flatten(-2)


@pytest.mark.parametrize("scheme", ["euler_b", "zoh", "euler"])
@pytest.mark.parametrize("groups", [1, 3])
def test_head_affine_spec_runs_ssd_equal_to_loop(scheme, groups):
    torch.manual_seed(3)
    blk = HeadSSM(groups=groups, scheme=scheme).to(f64)
    assert blk.fused_path() == "ssd"
    x = torch.randn(2, 11, 6, dtype=f64, requires_grad=True)
    s0 = torch.randn(2, 3, 2, 4, dtype=f64, requires_grad=True)
    w = torch.randn(2, 11, 6, dtype=f64)
    res = {}
    for b in ("auto", "loop"):
        blk.backend = b
        y, sT = blk(x, initial_state=s0, return_final_state=True)
        res[b] = (y, sT, torch.autograd.grad((y * w).sum() + sT.pow(2).sum(),
                                             [x, s0, *blk.parameters()]))
    (y, sT, g), (yl, sTl, gl) = res["auto"], res["loop"]
    assert (y - yl).abs().max() <= 1e-12 and (sT - sTl).abs().max() <= 1e-12
    for a, c in zip(g, gl):
        assert (a - c).abs().max() <= 1e-12 * max(1.0, c.abs().max().item())
    blk.backend = "auto"
    blk.eps = 0.1  # noise on the matrix state: the ssd path declines, linear_scan takes it
    blk.train()
    assert blk.fused_path() == "linear_scan"
    torch.manual_seed(5)
    noisy = blk(x)
    blk.backend = "loop"
    torch.manual_seed(5)
    assert (blk(x) - noisy).abs().max() <= 1e-12


def test_mamba_noise_is_never_dropped_by_its_closed_form():
    """ε > 0 on HJMamba: the selective-scan kernel has no noise term, so it declines and the
    linear_scan path adds the same draws the loop adds."""
    blk = HJMamba(4, d_state=3, d_conv=3, expand=1, dtype=f64).train()
    blk.eps = 0.05
    x = torch.randn(2, 6, 4, dtype=f64)
    torch.manual_seed(11)
    fused = blk(x)
    blk.backend = "loop"
    torch.manual_seed(11)
    looped = blk(x)
    assert (fused - looped).abs().max() <= 1e-12
    blk.eval()
    assert (blk(x) - fused).abs().max() > 1e-6


def test_retention_kind_in_an_lm_decodes_like_its_forward():
    from hjseq.models import HJLM

    model = HJLM({"d_model": 16, "blocks": [{"kind": "retention", "n_heads": 2}]}).double()
    assert model.layers[0].mixer.fused_path() == "ssd"
    ids = torch.randint(0, 256, (2, 9))
    full = model(ids)
    state = None
    for t in range(9):
        logits, state = model.step(ids[:, t], state)
        assert (logits - full[:, t]).abs().max() <= 1e-10
