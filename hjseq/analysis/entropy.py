"""The attribution-entropy landscape ``H(π(x; ε))`` and its fold bifurcations in ε.

Atoms ``(y_j, g_j)``, j = 1..N, y ``(N, d)``, g ``(N,)``, time t > 0, viscosity ε > 0,
cost ``c_j(x) = g_j + |x − y_j|²/(4t)``, score ``s_j = −c_j`` and Gibbs weights
``π_j = softmax_j(s_j/ε)`` (``hjseq.hopf.gibbs_weights``). With ``a_j = −log π_j`` and
``ȳ = E_π[y]``:

    H(x)        = E_π[a]                                         ∈ [0, log N]
    ∇_x H       = Cov_π(y, a)/(2tε)                                (since ∇π_j = π_j (y_j − ȳ)/(2tε))
    ∇²_x H      = E_π[(a − H − 1)(y − ȳ)(y − ȳ)ᵀ]/(2tε)²
    ∂H/∂ε       = Var_π(s)/ε³ ≥ 0                                  (H rises from 0 to log N)

Critical points of H are found by batched, damped Newton iterations on ``∇H = 0`` from many
starts, classified by the eigenvalues of ``∇²H``; sweeping ε and bisecting where the count
changes locates the folds (saddle-node bifurcations: a pair of critical points meets, an
eigenvalue of ``∇²H`` crosses 0, and two attribution basins merge).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hjseq import hopf


def _check_atoms(y: Tensor, g: Tensor, t: float, eps: float) -> None:
    if y.dim() != 2:
        raise ValueError(f"y (atom positions) must have shape (N, d), got {tuple(y.shape)}")
    if g.shape != (y.shape[0],):
        raise ValueError(f"g (atom values) must have shape (N,) = ({y.shape[0]},), got {tuple(g.shape)}")
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 for the entropy landscape (π is one-hot at 0), got {eps}")


def _gibbs(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """π, a = −log π (0 where π = 0), and H = E_π[a]: shapes (..., N), (..., N), (...)."""
    _check_atoms(y, g, t, eps)
    if x.shape[-1] != y.shape[1]:
        raise ValueError(f"x must have shape (..., d={y.shape[1]}), got {tuple(x.shape)}")
    logits = -hopf.atom_costs(x, y, g, t) / eps
    logpi = torch.log_softmax(logits, dim=-1)
    pi = logpi.exp()
    a = torch.where(pi > 0, -logpi, torch.zeros_like(logpi))
    return pi, a, (pi * a).sum(-1)


def attribution_entropy(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
    """``H(π(x; ε)) = −Σ_j π_j log π_j``: x ``(..., d)`` → ``(...)``, in ``[0, log N]``."""
    return _gibbs(x, y, g, t, eps)[2]


def entropy_gradient(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
    """``∇_x H = Cov_π(y, −log π)/(2tε)``: ``(..., d)``."""
    pi, a, H = _gibbs(x, y, g, t, eps)
    return ((pi * (a - H[..., None])) @ y) / (2 * t * eps)  # Σ_j π_j (a_j − H) y_j = Cov_π(y, a)


def entropy_hessian(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
    """``∇²_x H = E_π[(a − H − 1)(y − ȳ)(y − ȳ)ᵀ]/(2tε)²``: ``(..., d, d)``."""
    pi, a, H = _gibbs(x, y, g, t, eps)
    dy = y - (pi @ y)[..., None, :]  # (..., N, d)
    w = pi * (a - H[..., None] - 1)
    return torch.einsum("...n,...ni,...nj->...ij", w, dy, dy) / (2 * t * eps) ** 2


def entropy_eps_derivative(x: Tensor, y: Tensor, g: Tensor, t: float, eps: float) -> Tensor:
    """``∂H/∂ε = Var_π(s)/ε³`` with scores ``s_j = −(g_j + |x − y_j|²/(4t))``: ``(...)``."""
    pi, _, _ = _gibbs(x, y, g, t, eps)
    s = -hopf.atom_costs(x, y, g, t)
    s = torch.where(pi > 0, s, torch.zeros_like(s))  # masked atoms (s = −∞) carry no mass
    mean = (pi * s).sum(-1, keepdim=True)
    return (pi * (s - mean) ** 2).sum(-1) / eps**3


# ----------------------------------------------------------------------------- critical points
@dataclass
class CriticalPoint:
    """A zero of ``∇H``: position x ``(d,)``, kind (``min``/``max``/``saddle``/``degenerate``),
    entropy H there, and the eigenvalues of ``∇²H``."""

    x: Tensor
    kind: str
    entropy: float
    eigenvalues: Tensor


def default_box(y: Tensor, margin: float = 1.0) -> tuple[Tensor, Tensor]:
    """The atoms' bounding box, widened by ``margin`` on every side: (lo, hi) each ``(d,)``."""
    return y.min(0).values - margin, y.max(0).values + margin


def _seeds(y: Tensor, lo: Tensor, hi: Tensor, n_seeds: int, generator: torch.Generator) -> Tensor:
    d = y.shape[1]
    if d == 1:
        grid = torch.linspace(0, 1, n_seeds, dtype=y.dtype)[:, None]
    elif d == 2:
        k = max(2, int(math.sqrt(n_seeds)))
        u = torch.linspace(0, 1, k, dtype=y.dtype)
        grid = torch.cartesian_prod(u, u)
    else:
        grid = torch.rand(n_seeds, d, dtype=y.dtype, generator=generator)
    return torch.cat([y, lo + grid * (hi - lo)])


def critical_points(
    y: Tensor,
    g: Tensor,
    t: float,
    eps: float,
    *,
    box: tuple[Tensor, Tensor] | None = None,
    n_seeds: int = 400,
    max_iter: int = 200,
    gtol: float = 1e-10,
    merge_tol: float | None = None,
    eig_tol: float = 1e-9,
    seed: int = 0,
) -> list[CriticalPoint]:
    """All critical points of ``H(π(x; ε))`` inside ``box`` (default: atoms' hull ± 1).

    Multi-start Newton ``x ← x − (∇²H)⁺ ∇H`` (step clipped to 1/40 of the box) from the
    atoms and ``n_seeds`` points (a grid for d ≤ 2, uniform random otherwise), all run as
    one batch. A start counts when ``|∇H| ≤ gtol`` inside the box; duplicates within
    ``merge_tol`` (default 1e-5 × box diagonal) merge. Kind from the Hessian eigenvalues λ:
    all λ > eig_tol·max|λ| → ``min``, all < −… → ``max``, mixed → ``saddle``, else
    ``degenerate``. Sorted by the first coordinate.
    """
    _check_atoms(y, g, t, eps)
    y = y.to(torch.float64)
    g = g.to(torch.float64)
    lo, hi = default_box(y) if box is None else (box[0].to(y), box[1].to(y))
    span = hi - lo
    diag = float(span.norm())
    merge_tol = 1e-5 * diag if merge_tol is None else merge_tol
    gen = torch.Generator().manual_seed(seed)
    x = _seeds(y, lo, hi, n_seeds, gen)
    max_step = diag / 40
    inside = lambda z: ((z >= lo) & (z <= hi)).all(-1)
    done = []
    for _ in range(max_iter):
        G = entropy_gradient(x, y, g, t, eps)
        Hs = entropy_hessian(x, y, g, t, eps)
        if y.shape[1] == 1:
            step = G / torch.where(Hs[..., 0] == 0, torch.ones_like(G), Hs[..., 0])
        else:
            step = (torch.linalg.pinv(Hs) @ G[..., None])[..., 0]
        norm = step.norm(dim=-1)
        x = x - step * torch.clamp(max_step / norm.clamp_min(1e-300), max=1.0)[..., None]
        still = norm > 1e-12 * diag
        done.append(x[~still])
        x = x[still & inside(x)]  # starts that leave the box are dropped (H flattens towards 0 outside)
        if x.shape[0] == 0:
            break
    x = torch.cat(done + [x])
    x = x[inside(x)]
    ok = entropy_gradient(x, y, g, t, eps).norm(dim=-1) <= gtol
    found: list[Tensor] = []
    for xi in x[ok]:
        if all(float((xi - f).norm()) > merge_tol for f in found):
            found.append(xi)
    found.sort(key=lambda v: tuple(v.tolist()))
    out = []
    for xi in found:
        lam = torch.linalg.eigvalsh(entropy_hessian(xi, y, g, t, eps))
        scale = float(lam.abs().max()) or 1.0
        if bool((lam > eig_tol * scale).all()):
            kind = "min"
        elif bool((lam < -eig_tol * scale).all()):
            kind = "max"
        elif bool((lam.abs() > eig_tol * scale).all()):
            kind = "saddle"
        else:
            kind = "degenerate"
        out.append(CriticalPoint(xi, kind, float(attribution_entropy(xi, y, g, t, eps)), lam))
    return out


# ----------------------------------------------------------------------------- continuation in ε
@dataclass
class Fold:
    """A fold (saddle-node) in ε: the count goes ``count_below → count_above`` across ``eps``
    (located to ``width`` by bisection in log ε); x: where the pair meets."""

    eps: float
    count_below: int
    count_above: int
    x: Tensor
    width: float


@dataclass
class BifurcationDiagram:
    """Critical points of H against ε: ``points[i]`` are those at ``eps[i]``; ``folds``
    where pairs meet. ``to_dict()`` gives plain JSON-able data."""

    eps: list[float]
    points: list[list[CriticalPoint]]
    folds: list[Fold] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        return [len(p) for p in self.points]

    def to_dict(self) -> dict:
        return {
            "eps": self.eps,
            "counts": self.counts,
            "points": [
                [{"x": p.x.tolist(), "kind": p.kind, "entropy": p.entropy} for p in pts]
                for pts in self.points
            ],
            "folds": [
                {"eps": f.eps, "count_below": f.count_below, "count_above": f.count_above,
                 "x": f.x.tolist(), "width": f.width}
                for f in self.folds
            ],
        }


def bifurcation_diagram(
    y: Tensor,
    g: Tensor,
    t: float,
    eps_grid: Tensor | list[float],
    *,
    refine_tol: float = 1e-4,
    **kwargs,
) -> BifurcationDiagram:
    """Sweep ε over ``eps_grid`` (increasing), find the critical points at each, and locate
    every change of the count by bisection in log ε down to relative width ``refine_tol``.
    The fold position x is the midpoint of the closest pair lost (or gained) across it.
    ``kwargs`` go to :func:`critical_points`."""
    eps_list = [float(e) for e in eps_grid]
    if any(b <= a for a, b in zip(eps_list, eps_list[1:])) or not eps_list or eps_list[0] <= 0:
        raise ValueError("eps_grid must be positive and strictly increasing")
    pts = [critical_points(y, g, t, e, **kwargs) for e in eps_list]
    folds = []
    for i in range(len(eps_list) - 1):
        if len(pts[i]) == len(pts[i + 1]):
            continue
        a, b = eps_list[i], eps_list[i + 1]
        pa, pb = pts[i], pts[i + 1]
        while b / a - 1 > refine_tol:
            m = math.sqrt(a * b)
            pm = critical_points(y, g, t, m, **kwargs)
            if len(pm) == len(pa):
                a, pa = m, pm
            else:
                b, pb = m, pm
        more = pa if len(pa) > len(pb) else pb
        folds.append(Fold(math.sqrt(a * b), len(pa), len(pb), _pair_midpoint(more), b / a - 1))
    return BifurcationDiagram(eps_list, pts, folds)


def _pair_midpoint(points: list[CriticalPoint]) -> Tensor:
    """Midpoint of the two closest critical points (the pair about to annihilate)."""
    if len(points) < 2:
        return points[0].x if points else torch.empty(0)
    best = None
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            dist = float((points[i].x - points[j].x).norm())
            if best is None or dist < best[0]:
                best = (dist, (points[i].x + points[j].x) / 2)
    return best[1]
