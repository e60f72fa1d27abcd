"""Figures of the ε lens from the data dicts of :mod:`hjseq.analysis.reproduce` (matplotlib,
Agg backend; ``pip install hjseq[plot]``). Each function writes one PNG and returns its path."""
from __future__ import annotations

from pathlib import Path

KIND_STYLE = {"min": ("v", "#1565C0"), "max": ("^", "#B71C1C"), "saddle": ("D", "#F9A825"),
              "degenerate": ("x", "#555555")}


def _plt():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("plots need matplotlib: pip install 'hjseq[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    fig.clf()
    return path


def bifurcation(data: dict, path: str | Path) -> Path:
    """Critical points of H against ε (1-D: position; else: H there), folds marked, and counts."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    one_d = all(len(p["x"]) == 1 for pts in data["points"] for p in pts)
    for eps, pts in zip(data["eps"], data["points"]):
        for p in pts:
            m, c = KIND_STYLE[p["kind"]]
            ax.plot(eps, p["x"][0] if one_d else p["entropy"], m, color=c, ms=4)
    for f in data["folds"]:
        ax.axvline(f["eps"], color="0.5", ls="--", lw=1)
        ax.annotate(f"fold ε={f['eps']:.3f}\n{f['count_below']}→{f['count_above']}", (f["eps"], 0.02),
                    xycoords=("data", "axes fraction"), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ε")
    ax.set_ylabel("critical point x" if one_d else "H at critical point")
    ax.set_title("critical points of H(π(x; ε))  (▲ max, ▼ min)")
    bx.plot(data["eps"], data["counts"], "o", color="k", ms=3)
    for f in data["folds"]:
        bx.axvline(f["eps"], color="0.5", ls="--", lw=1)
    bx.set_xscale("log")
    bx.set_xlabel("ε")
    bx.set_ylabel("# critical points")
    bx.set_title("count: " + " → ".join(map(str, data.get("count_sequence", []))))
    return _save(fig, path)


def entropy_landscape(y, g, t: float, eps_values: list[float], path: str | Path, lo=-3.0, hi=3.5) -> Path:
    """H(π(x; ε)) over a 1-D interval for several ε, with the atoms marked."""
    import torch

    from hjseq.analysis.entropy import attribution_entropy

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = torch.linspace(lo, hi, 800, dtype=torch.float64)[:, None]
    for e in eps_values:
        ax.plot(x[:, 0], attribution_entropy(x, y, g, t, e), label=f"ε={e:g}")
    for yj in y[:, 0].tolist():
        ax.axvline(yj, color="0.8", lw=0.8)
    ax.set_xlabel("x")
    ax.set_ylabel("H(π)")
    ax.legend(fontsize=7)
    ax.set_title("attribution-entropy landscape (atoms: grey lines)")
    return _save(fig, path)


def slopes(groups: dict, path: str | Path, title: str, xkey: str = "N", ykey: str = "error",
           xlabel: str = "N", ylabel: str = "error") -> Path:
    """Log–log curves ``groups[label][ykey]`` against ``groups[label][xkey]`` with fitted slopes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, r in groups.items():
        pred = r.get("predicted")
        ax.loglog(r[xkey], r[ykey], "o-", ms=3,
                  label=f"{label}: slope {r['slope' if ykey != 'rmse_inviscid' else 'slope_inviscid']:.2f}"
                  + (f" (pred {pred:.2f})" if pred is not None else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def hessian_bound(rows: list[dict], path: str | Path) -> Path:
    """Measured max ‖∇²f‖₂ and the bound max|W|²/ε against ε (trained models)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    eps = [r["eps"] for r in rows]
    ax.loglog(eps, [r["max_hessian"] for r in rows], "o-", label="max ‖∇²f‖₂ (measured)")
    ax.loglog(eps, [r["hessian_bound"] for r in rows], "s--", label="max|W|²/ε (bound)")
    ax.set_xlabel("ε")
    ax.set_ylabel("spectral norm")
    ax.set_title("Hessian bound on trained LSE models")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def eps_tradeoff(rows: list[dict], path: str | Path) -> Path:
    """Accuracy (test RMSE) against curvature (max ‖∇²f‖₂), one point per ε."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.loglog([r["max_hessian"] for r in rows], [r["test_rmse"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"ε={r['eps']:g}", (r["max_hessian"], r["test_rmse"]), fontsize=7)
    ax.set_xlabel("curvature max ‖∇²f‖₂")
    ax.set_ylabel("test RMSE")
    ax.set_title("ε sweep: accuracy vs curvature")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def robustness(data: dict, path: str | Path) -> Path:
    """Worst-case change under ‖δ‖ ≤ r against ε for each attacked map."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key, label in (("lse_output", "LSE output f"), ("lse_gradient", "LSE gradient ∇f"),
                       ("attention_output", "attention output")):
        rows = data[key]
        ax.loglog([r["eps"] for r in rows], [r["max_change"] for r in rows], "o-", label=label)
    rows = data["lse_gradient"]
    ax.loglog([r["eps"] for r in rows], [r["bound"] for r in rows], "k--", lw=1, label="r·max|W|²/ε")
    ax.set_xlabel("ε")
    ax.set_ylabel(f"worst-case change, ‖δ‖ ≤ {data['radius']}")
    ax.set_title("robustness vs ε (PGD attack)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def entropy_vs_eps(data: dict, path: str | Path) -> Path:
    """Mean/min/max of H over x against ε, with log N."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.semilogx(data["eps"], data["H_mean"], label="mean over x")
    ax.fill_between(data["eps"], data["H_min"], data["H_max"], alpha=0.25, label="min–max over x")
    ax.axhline(data["log_N"], color="k", ls=":", label="log N")
    ax.set_xlabel("ε")
    ax.set_ylabel("H(π)")
    ax.set_title("H is nondecreasing in ε: 0 → log N")
    ax.legend(fontsize=7)
    return _save(fig, path)
