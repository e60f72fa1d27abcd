"""The ε lens: attribution weights, the entropy landscape and its folds, curvature and
robustness, the tropical limit, and the rates in N and n (see each module's docstring).

Modules: :mod:`.influence` (π, E_π[y], E_π[g], influence identities, attention weights),
:mod:`.entropy` (H(π), ∇H, ∇²H, critical points, bifurcation diagram in ε),
:mod:`.robustness` (∇²f = Cov_π(W)/ε, the bound max|W|²/ε, gradient attacks),
:mod:`.tropical` (``tropicalize``, linear-region counts), :mod:`.scaling` (ε* = N^(−1/d),
quadrature/scaling/intrinsic-dimension/generalization rates, ε sweeps), :mod:`.fit`,
:mod:`.plots` (matplotlib figures), :mod:`.reproduce` (the paper's numbers), :mod:`.cli`
(``hjseq analyze``).
"""
from hjseq.analysis.entropy import (
    attribution_entropy,
    bifurcation_diagram,
    critical_points,
    entropy_eps_derivative,
    entropy_gradient,
    entropy_hessian,
)
from hjseq.analysis.influence import (
    TrainingPointRegressor,
    attention_weights,
    bias_influence,
    characteristic_foot,
    hopf_cole_gradient,
    lse_weights,
    soft_prediction,
    weight_influence,
)
from hjseq.analysis.robustness import check_hessian_bound, hessian_bound, lse_hessian, robustness_curve
from hjseq.analysis.scaling import eps_star, eps_sweep
from hjseq.analysis.tropical import count_linear_regions, tropicalize

__all__ = [
    "attribution_entropy", "bifurcation_diagram", "critical_points", "entropy_eps_derivative",
    "entropy_gradient", "entropy_hessian", "TrainingPointRegressor", "attention_weights",
    "bias_influence", "characteristic_foot", "hopf_cole_gradient", "lse_weights", "soft_prediction",
    "weight_influence", "check_hessian_bound", "hessian_bound", "lse_hessian", "robustness_curve",
    "eps_star", "eps_sweep", "count_linear_regions", "tropicalize",
]
