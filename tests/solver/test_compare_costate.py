import json
import math

import pytest
import torch

from hjseq.nn import HJGRU, HJLSTM, HJMamba, HJRNN
from hjseq.solver.compare import compare, fit_order
from hjseq.solver.costate import block_states, costate, costate_recursion, flow_indices

F64 = torch.float64


def _blocks():
    torch.manual_seed(1)
    return [HJRNN(3, 4), HJGRU(3, 4), HJLSTM(3, 4),
            HJMamba(4, d_state=3, d_conv=2, expand=1, backend="loop"),
            HJMamba(4, d_state=3, d_conv=2, expand=1, scheme="zoh", backend="loop")]


@pytest.mark.parametrize("i", range(5), ids=["rnn", "gru", "lstm", "mamba_euler_b", "mamba_zoh"])
def test_compare_every_recurrent_block(i, tmp_path):
    block = _blocks()[i].double()
    x = torch.randn(2, 4, block.input_size, dtype=F64)
    rep = compare(block, x, refinements=(1, 2, 4))
    _, traj = block.trajectory(x)
    assert torch.allclose(rep.discrete, traj.flatten(2), atol=1e-14)
    assert rep.local_error.shape == (4,) and rep.global_error.shape == (5,)
    assert rep.global_error[0] == 0  # same initial state
    if rep.declared_order == math.inf:
        assert rep.global_max_error < 1e-10 and math.isnan(rep.observed_order)
    else:
        errs = rep.refinement_error
        assert errs[0] > errs[1] > errs[2] > 0 and rep.observed_order > 0.5
        assert errs[0] == pytest.approx(rep.global_max_error)
    d = json.loads(rep.to_json(str(tmp_path / "r.json")))
    assert d["block"] == type(block).__name__ and d["refinements"] == [1, 2, 4]
    assert json.loads((tmp_path / "r.json").read_text()) == d
    assert "| token k |" in rep.table() and str(rep) == rep.table()


def test_compare_plot_writes_png(tmp_path):
    block = HJRNN(2, 3).double()
    rep = compare(block, torch.randn(1, 3, 2, dtype=F64), refinements=(1, 2))
    path = rep.plot(str(tmp_path / "cmp.png"))
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_compare_errors():
    with pytest.raises(TypeError, match="characteristics"):
        compare(torch.nn.Linear(2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="distinct ints >= 1"):
        compare(HJRNN(2, 3), torch.zeros(1, 2, 2), refinements=(1, 1))


def test_fit_order_recovers_power_law():
    steps = [0.5, 0.25, 0.125]
    assert fit_order(steps, [3 * s ** 2.5 for s in steps]) == pytest.approx(2.5)
    assert math.isnan(fit_order(steps, [0.0, 0.0, 1e-3]))


@pytest.mark.parametrize("cls", [HJGRU, HJLSTM])
def test_costate_with_initial_state(cls):
    torch.manual_seed(2)
    block = cls(3, 4).double()
    x = torch.randn(2, 4, 3, dtype=F64)
    init = block.zero_state(x)
    init = tuple(torch.randn_like(p) for p in init) if isinstance(init, tuple) else torch.randn_like(init)
    states, step = block_states(block, x, init)
    w = torch.randn_like(states)
    p = costate(block, x, w, init)
    leaf = states[:, 0].clone().requires_grad_(True)
    traj = [leaf]
    for k in range(4):
        traj.append(step(k, traj[-1]))
    (g0,) = torch.autograd.grad((w * torch.stack(traj, 1)).sum(), leaf)
    assert (p[:, 0] - g0).abs().max() < 1e-12


def test_costate_linear_map_closed_form_and_errors():
    A = torch.tensor([[0.5, 1.0], [0.0, 2.0]], dtype=F64)
    states = torch.zeros(1, 3, 2, dtype=F64)
    dl = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=F64)
    p = costate_recursion(lambda k, s: s @ A.T, states, dl)
    p2 = dl[0, 2]
    p1 = A.T @ p2 + dl[0, 1]
    p0 = A.T @ p1 + dl[0, 0]
    assert torch.allclose(p[0], torch.stack([p0, p1, p2]))
    with pytest.raises(ValueError, match=r"\(B, L\+1, S\)"):
        costate_recursion(lambda k, s: s, states, dl[:, :2])
    with pytest.raises(ValueError, match="dloss_dstates must be"):
        costate(HJRNN(2, 3).double(), torch.zeros(1, 2, 2, dtype=F64),
                torch.zeros(1, 3, 4, dtype=F64))


def test_flow_indices_locate_the_flow_state():
    x = torch.zeros(1, 2, 3, dtype=F64)
    assert flow_indices(HJRNN(3, 4).double(), x).tolist() == [0, 1, 2, 3]
    assert flow_indices(HJLSTM(3, 4).double(), x).tolist() == [4, 5, 6, 7]  # (h, c): c moves
    mamba = HJMamba(3, d_state=2, d_conv=3, expand=1).double()
    # (conv_state (D, d_conv-1), ssm_state (D, N)): the SSM state follows the 3·2 conv entries
    assert flow_indices(mamba, x).tolist() == list(range(6, 12))
