"""The paper's quantitative consequences, each as a function returning JSON-able numbers.

Used by the tests (small sizes), by ``examples/epsilon_lens.py`` (larger sizes, figures) and
by ``hjseq analyze --toy``. ``SMALL`` and ``FULL`` hold the two size presets.

The fold configuration (chosen by a random search over 6-atom, 1-D configurations and
documented here): atoms

    y = [−2.16, 0.56, 1.08, 1.40, 1.53, 2.43],   g = [0.25, 0.24, 0.33, 0.32, 0.40, 0.53],  t = 1.

At small ε the entropy landscape has 5 critical points (3 maxima on the basin boundaries,
2 minima); the basins of the atoms near 1.5–2.4 merge at ε ≈ 0.160 (5 → 3) and the
remaining two at ε ≈ 0.839 (3 → 1), leaving one maximum.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from hjseq import hopf
from hjseq.analysis.entropy import attribution_entropy, bifurcation_diagram, entropy_eps_derivative
from hjseq.analysis.fit import rmse, train_lse
from hjseq.analysis.influence import characteristic_foot, lse_weights
from hjseq.analysis.robustness import check_hessian_bound, lse_gradient, robustness_curve
from hjseq.analysis.scaling import (
    eps_star,
    eps_sweep,
    generalization_rate,
    intrinsic_dimension,
    quadrature_rate,
    scaling_law,
)
from hjseq.analysis.tropical import count_linear_regions, tropicalize
from hjseq.nn.attention import HJAttention
from hjseq.nn.lse import LSELayer

F64 = torch.float64

FOLD_ATOMS: tuple[Tensor, Tensor, float] = (
    torch.tensor([[-2.16], [0.56], [1.08], [1.40], [1.53], [2.43]], dtype=F64),
    torch.tensor([0.25, 0.24, 0.33, 0.32, 0.40, 0.53], dtype=F64),
    1.0,
)

SMALL = {
    "fold_eps": 12, "fold_seeds": 80,
    "quad": {1: [8, 16, 32, 64, 128], 2: [5, 8, 12, 18, 28], 4: [3, 4, 5, 6, 7]},
    "quad_ref": {1: 16384, 2: 200}, "quad_mc_ref": 100000,
    "scaling": {1: [8, 16, 32, 64, 128, 256], 2: [5, 8, 12, 18, 28, 40], 4: [3, 4, 5, 6, 7]},
    "intrinsic": {1: [16, 32, 64, 128], 2: [5, 8, 12, 18]}, "intrinsic_ref": {1: 4096, 2: 160},
    "gen_n": [200, 400, 800, 1600], "gen_repeats": 2,
    "train_steps": 600, "sweep_eps": [0.05, 0.1, 0.2, 0.4, 0.8],
}
FULL = {
    "fold_eps": 60, "fold_seeds": 300,
    "quad": {1: [4, 8, 16, 32, 64, 128, 256, 512, 1024], 2: [3, 5, 8, 12, 18, 28, 40, 60],
             4: [3, 4, 5, 6, 7, 8, 9, 10]},
    "quad_ref": {1: 32768, 2: 240}, "quad_mc_ref": 200000,
    "scaling": {1: [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048], 2: [3, 5, 8, 12, 18, 28, 40, 60],
                4: [3, 4, 5, 7, 9, 11]},
    "intrinsic": {1: [16, 32, 64, 128, 256, 512], 2: [5, 8, 12, 18, 28, 40]},
    "intrinsic_ref": {1: 16384, 2: 240},
    "gen_n": [100, 200, 400, 800, 1600, 3200, 6400], "gen_repeats": 5,
    "train_steps": 3000, "sweep_eps": [0.03, 0.05, 0.08, 0.12, 0.2, 0.35, 0.6, 1.0],
}


def fold_cascade(n_eps: int = 60, n_seeds: int = 300, refine_tol: float = 1e-4) -> dict:
    """The 5 → 3 → 1 cascade of :data:`FOLD_ATOMS` over ε ∈ [0.05, 3]: diagram data + folds."""
    y, g, t = FOLD_ATOMS
    eps_grid = torch.logspace(math.log10(0.05), math.log10(3.0), n_eps, dtype=F64)
    bd = bifurcation_diagram(y, g, t, eps_grid, refine_tol=refine_tol, n_seeds=n_seeds)
    out = bd.to_dict()
    out["atoms"] = {"y": y[:, 0].tolist(), "g": g.tolist(), "t": t}
    out["count_sequence"] = [c for i, c in enumerate(bd.counts) if i == 0 or c != bd.counts[i - 1]]
    return out


def entropy_in_eps(n_eps: int = 80, n_x: int = 200) -> dict:
    """H(π(x; ε)) over ε for points x of the fold configuration: nondecreasing, 0 → log N,
    and the closed form ∂H/∂ε = Var_π(s)/ε³ against a central difference."""
    y, g, t = FOLD_ATOMS
    x = torch.linspace(-3.0, 3.5, n_x, dtype=F64)[:, None]
    eps = torch.logspace(-3, 3, n_eps, dtype=F64).tolist()
    H = torch.stack([attribution_entropy(x, y, g, t, e) for e in eps])
    e0, h = 0.3, 1e-5
    fd = (attribution_entropy(x, y, g, t, e0 + h) - attribution_entropy(x, y, g, t, e0 - h)) / (2 * h)
    closed = entropy_eps_derivative(x, y, g, t, e0)
    return {
        "eps": eps, "H_mean": H.mean(1).tolist(), "H_min": H.min(1).values.tolist(),
        "H_max": H.max(1).values.tolist(), "log_N": math.log(len(g)),
        "min_increment": float((H[1:] - H[:-1]).min()),
        "H_mean_at_smallest_eps": float(H[0].mean()), "H_min_at_largest_eps": float(H[-1].min()),
        "dH_deps_max_rel_error": float(((closed - fd).abs() / fd.abs().clamp_min(1e-12)).max()),
    }


def quadrature_slopes(preset: dict) -> dict:
    """Quadrature rate of the normalised LSE, d = 1, 2, 4 (predicted −1, −½, −¼)."""
    out = {}
    for d in (1, 2, 4):
        kw = {"mc_ref": preset["quad_mc_ref"]} if d == 4 else {"n_ref": preset["quad_ref"][d]}
        out[d] = quadrature_rate(d, preset["quad"][d], **kw)
    return out


def scaling_slopes(preset: dict) -> dict:
    """Scaling law at ε = N^(−1/d), d = 1, 2, 4: slopes against the viscous closed form
    (the authors' target) and against its ε → 0 limit |x|²/12."""
    return {d: scaling_law(d, preset["scaling"][d]) for d in (1, 2, 4)}


def intrinsic_dimension_slopes(preset: dict) -> dict:
    """Quadrature slope with atoms on d-manifolds in R^D (linear and curved): follows −1/d."""
    out = {}
    for d, D in ((1, 4), (2, 6)):
        for kind in ("linear", "curved"):
            out[f"d{d}_D{D}_{kind}"] = intrinsic_dimension(d, D, preset["intrinsic"][d], kind=kind,
                                                           n_ref=preset["intrinsic_ref"][d])
    return out


def generalization_slopes(preset: dict) -> dict:
    """Held-out RMSE vs n for d = 1, 2, 3 (predicted −1/(d+2))."""
    return {d: generalization_rate(d, preset["gen_n"], repeats=preset["gen_repeats"]) for d in (1, 2, 3)}


def influence_identities(seed: int = 0) -> dict:
    """Max |closed form − autograd| for ∂f/∂b_j = π_j, ∂f/∂W_j = π_j x, ∇_x u = (x − E_π y)/(2t)."""
    gen = torch.Generator().manual_seed(seed)
    layer = LSELayer(3, 8, 0.4, dtype=F64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 3, generator=gen, dtype=F64))
        layer.bias.copy_(torch.randn(8, generator=gen, dtype=F64))
    t = 0.7
    errs = {"df_db": 0.0, "df_dW": 0.0, "grad_u": 0.0}
    for x in torch.randn(20, 3, generator=gen, dtype=F64):
        gW, gb = torch.autograd.grad(layer(x), (layer.weight, layer.bias))
        pi = lse_weights(layer, x).detach()
        errs["df_db"] = max(errs["df_db"], float((gb - pi).abs().max()))
        errs["df_dW"] = max(errs["df_dW"], float((gW - pi[:, None] * x).abs().max()))
        xr = x.clone().requires_grad_(True)
        y, g = (a.detach() for a in layer.atoms(t))
        (gu,) = torch.autograd.grad(hopf.hopf_cole(xr, y, g, t, layer.eps), xr)
        closed = (x - characteristic_foot(layer, x, t).detach()) / (2 * t)
        errs["grad_u"] = max(errs["grad_u"], float((gu - closed).abs().max()))
    return errs


def hessian_bound_checks(preset: dict, seed: int = 0) -> dict:
    """‖∇²f‖₂ against max_j|W_j|²/ε on random LSE layers (several ε) and on LSE models
    trained on |x| (the authors' robustness setup: N = 30, x ∈ [−2, 2])."""
    gen = torch.Generator().manual_seed(seed)
    random_checks = []
    for eps in (0.02, 0.1, 0.5, 2.0):
        for d in (1, 4):
            layer = LSELayer(d, 16, eps, dtype=F64)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(16, d, generator=gen, dtype=F64))
                layer.bias.copy_(torch.randn(16, generator=gen, dtype=F64))
            x = torch.randn(500, d, generator=gen, dtype=F64) * 2
            random_checks.append(check_hessian_bound(layer, x).to_dict())
    X = torch.rand(300, 1, generator=gen, dtype=F64) * 4 - 2
    X_te = torch.linspace(-1.8, 1.8, 200, dtype=F64)[:, None]
    sweep = eps_sweep(X, X[:, 0].abs(), X_te, X_te[:, 0].abs(), preset["sweep_eps"],
                      n_atoms=30, steps=preset["train_steps"])
    return {
        "random": random_checks,
        "trained": sweep,
        "violations": sum(c["violated"] for c in random_checks) + sum(s["bound_violated"] for s in sweep),
        "max_ratio": max([c["max_ratio"] for c in random_checks]
                         + [s["max_hessian"] / s["hessian_bound"] for s in sweep]),
    }


def robustness_curves(eps_list: list[float] | None = None, radius: float = 0.1, seed: int = 0) -> dict:
    """Worst-case change under ‖δ‖₂ ≤ radius (PGD) against ε for (a) an LSE layer's output
    and gradient map x ↦ ∇f = E_π[W] (whose Lipschitz constant is ≤ max|W|²/ε) and
    (b) an attention block's output, with weights fixed across ε."""
    eps_list = eps_list or [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(40, 8, generator=gen, dtype=F64)
    W = W / W.norm(dim=1, keepdim=True)
    x = torch.randn(32, 8, generator=gen, dtype=F64) / math.sqrt(8)

    def lse_at(eps):
        layer = LSELayer(8, 40, eps, dtype=F64)
        with torch.no_grad():
            layer.weight.copy_(W)
            layer.bias.zero_()
        return layer

    out_curve = robustness_curve(lambda e: lse_at(e), x, radius, eps_list)
    grad_curve = robustness_curve(lambda e: (lambda z, L=lse_at(e): lse_gradient(L, z)), x, radius, eps_list)
    for row in grad_curve:
        row["bound"] = radius * 1.0 / row["eps"]  # max|W_j|² = 1 (unit rows)
    torch.manual_seed(seed)
    att = HJAttention(16, 2, causal=True, dtype=F64)
    xa = torch.randn(8, 6, 16, generator=gen, dtype=F64)

    def att_at(eps):
        m = HJAttention(16, 2, causal=True, eps=eps, dtype=F64)
        m.load_state_dict(att.state_dict())
        return m

    att_curve = robustness_curve(att_at, xa, radius, eps_list)
    return {"radius": radius, "lse_output": out_curve, "lse_gradient": grad_curve, "attention_output": att_curve}


def tropical_summary(seed: int = 0) -> dict:
    """Tropicalize a 1-D LSE fitted to |x| and a 2-D one; deviation vs the ε log N bound; regions."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(300, 1, generator=gen, dtype=F64) * 4 - 2
    layer = train_lse(X, X[:, 0].abs(), 12, 0.1, steps=400)
    trop, report = tropicalize(layer)
    xs = torch.linspace(-2, 2, 2001, dtype=F64)[:, None]
    with torch.no_grad():
        dev = layer(xs) - trop(xs)
    y2 = torch.cartesian_prod(*[torch.linspace(-1, 1, 4, dtype=F64)] * 2)
    layer2 = LSELayer.from_atoms(y2, torch.zeros(16, dtype=F64), eps=0.2)
    return {
        "report": report.to_dict(),
        "max_deviation": float(dev.max()), "min_deviation": float(dev.min()),
        "bound": report.lse_bound,
        "regions_1d": count_linear_regions(trop, -2.0, 2.0, 4001),
        "active_atoms_1d": int(torch.unique(layer.logits(xs).argmax(-1)).numel()),
        "regions_2d_grid_atoms": count_linear_regions(tropicalize(layer2)[0], -1.5, 1.5, 300),
    }


def run_all(preset: dict = SMALL, log=None) -> dict:
    """Every reproduction at the given size preset; ``log(str)`` reports progress."""
    import time

    steps = [
        ("fold_cascade", lambda: fold_cascade(preset["fold_eps"], preset["fold_seeds"])),
        ("entropy_in_eps", entropy_in_eps),
        ("quadrature", lambda: quadrature_slopes(preset)),
        ("scaling_law", lambda: scaling_slopes(preset)),
        ("intrinsic_dimension", lambda: intrinsic_dimension_slopes(preset)),
        ("generalization", lambda: generalization_slopes(preset)),
        ("influence_identities", influence_identities),
        ("hessian_bound", lambda: hessian_bound_checks(preset)),
        ("robustness", robustness_curves),
        ("tropical", tropical_summary),
    ]
    out = {}
    for name, fn in steps:
        t0 = time.perf_counter()
        out[name] = fn()
        if log is not None:
            log(f"{name}: {time.perf_counter() - t0:.1f} s")
    out["eps_star"] = {f"N={N},d={d}": eps_star(N, d) for N, d in ((16, 2), (100, 1), (256, 4))}
    return out
