import math

import pytest
import torch

from hjseq.nn import HJRNN
from hjseq.solver.sde import euler_maruyama, feynman_kac, stochastic_characteristics

F64 = torch.float64


def test_euler_maruyama_ou_moments_and_seeding():
    # dX = −θX dt + √(2ε) dW: E X_T = x0 e^{−θT}, Var X_T = ε(1 − e^{−2θT})/θ
    theta, eps, T, x0, P = 1.5, 0.2, 1.0, 1.0, 20000
    X = euler_maruyama(lambda t, x: -theta * x, torch.full((P, 1), x0, dtype=F64), 0.0, T, eps,
                       n_steps=200, seed=3)
    se_mean = math.sqrt(eps / theta / P)
    assert abs(X.mean().item() - x0 * math.exp(-theta * T)) < 4 * se_mean + 5e-3
    var = eps * (1 - math.exp(-2 * theta * T)) / theta
    assert abs(X.var().item() - var) < 0.05 * var
    again = euler_maruyama(lambda t, x: -theta * x, torch.full((P, 1), x0, dtype=F64), 0.0, T,
                           eps, n_steps=200, seed=3)
    assert torch.equal(X, again)
    path = euler_maruyama(lambda t, x: -theta * x, torch.zeros(4, 2, dtype=F64), 0.0, T, eps,
                          n_steps=10, seed=0, return_path=True)
    assert path.shape == (11, 4, 2) and torch.equal(path[0], torch.zeros(4, 2, dtype=F64))


def test_stochastic_characteristics_match_the_block():
    torch.manual_seed(0)
    block = HJRNN(3, 4, dt=0.5).double()
    x = torch.randn(2, 5, 3, dtype=F64)
    view = block.characteristics(x)
    # ε = 0 and one substep per token: exactly the block's Euler steps
    det = stochastic_characteristics(view.rhs, view.states[:, 0], 5, eps=0.0, dt=0.5)
    assert torch.allclose(det, view.states, atol=1e-14)
    # pure noise (rhs = 0): variance 2ε·dt per token
    P, eps = 20000, 0.3
    noisy = stochastic_characteristics(lambda k, h: torch.zeros_like(h),
                                       torch.zeros(P, 1, dtype=F64), 4, eps=eps, dt=0.5,
                                       n_sub=3, seed=1)
    assert abs(noisy[:, -1].var().item() - 2 * eps * 0.5 * 4) < 0.05 * 2 * eps * 0.5 * 4


def test_feynman_kac_heat_equation_closed_form():
    # drift 0, g(x) = x²: u = x² + 2εt exactly; the estimate is within 4 standard errors
    x = torch.tensor([[0.0], [1.0]], dtype=F64)
    est = feynman_kac(lambda z: z[..., 0] ** 2, x, 0.5, 0.2, drift=lambda z: 0 * z,
                      n_paths=5000, n_steps=10, seed=0)
    exact = x[:, 0] ** 2 + 2 * 0.2 * 0.5
    assert est.value.shape == (2,) and est.n_paths == 5000
    assert ((est.value - exact).abs() <= 4 * est.stderr).all()


def test_feynman_kac_errors():
    x = torch.zeros(3, 1, dtype=F64)
    g = lambda z: z[..., 0]  # noqa: E731
    with pytest.raises(ValueError, match="exactly one"):
        feynman_kac(g, x, 1.0, 0.1)
    with pytest.raises(ValueError, match="exactly one"):
        feynman_kac(g, x, 1.0, 0.1, drift=lambda z: z, hopf_cole=True)
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        feynman_kac(g, torch.zeros(3, dtype=F64), 1.0, 0.1, hopf_cole=True)
    with pytest.raises(ValueError, match="eps > 0"):
        feynman_kac(g, x, 1.0, 0.0, hopf_cole=True)
    with pytest.raises(ValueError, match="n_paths"):
        feynman_kac(g, x, 1.0, 0.1, hopf_cole=True, n_paths=1)
    with pytest.raises(ValueError, match="n_steps"):
        euler_maruyama(lambda t, z: z, x, 0.0, 1.0, 0.1, n_steps=0)
