"""Write the ε-lens reproductions (figures + one JSON) into a directory; shared by
``examples/epsilon_lens.py`` and ``hjseq analyze --toy``."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hjseq.analysis import plots
from hjseq.analysis import reproduce as R


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN
        return None
    return obj


def summary(results: dict) -> dict:
    """The headline numbers of :func:`hjseq.analysis.reproduce.run_all`, flat and short."""
    fc = results["fold_cascade"]
    out = {
        "fold_count_sequence": fc["count_sequence"],
        "fold_eps": [round(f["eps"], 4) for f in fc["folds"]],
        "entropy_min_increment_in_eps": results["entropy_in_eps"]["min_increment"],
        "dH_deps_max_rel_error": results["entropy_in_eps"]["dH_deps_max_rel_error"],
        "quadrature_slopes": {d: round(r["slope"], 3) for d, r in results["quadrature"].items()},
        "scaling_slopes_viscous_target": {d: round(r["slope"], 3) for d, r in results["scaling_law"].items()},
        "scaling_slopes_inviscid_target": {d: round(r["slope_inviscid"], 3)
                                           for d, r in results["scaling_law"].items()},
        "intrinsic_dimension_slopes": {k: round(r["slope"], 3) for k, r in results["intrinsic_dimension"].items()},
        "generalization_slopes": {d: {"fitted": round(r["slope"], 3), "predicted": round(r["predicted"], 3)}
                                  for d, r in results["generalization"].items()},
        "hessian_bound_violations": results["hessian_bound"]["violations"],
        "hessian_max_ratio_to_bound": results["hessian_bound"]["max_ratio"],
        "influence_identity_max_errors": results["influence_identities"],
        "tropical": {k: v for k, v in results["tropical"].items() if k != "report"},
    }
    return out


def write(results: dict, out_dir: str | Path, make_plots: bool = True) -> dict[str, Path]:
    """Write ``results.json`` (everything), ``summary.json`` and the figures. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1))
    files["results"] = out / "results.json"
    (out / "summary.json").write_text(json.dumps(_jsonable(summary(results)), indent=1))
    files["summary"] = out / "summary.json"
    if not make_plots:
        return files
    y, g, t = R.FOLD_ATOMS
    files["bifurcation"] = plots.bifurcation(results["fold_cascade"], out / "bifurcation.png")
    files["entropy_landscape"] = plots.entropy_landscape(y, g, t, [0.05, 0.16, 0.4, 0.84, 2.0],
                                                         out / "entropy_landscape.png")
    files["entropy_vs_eps"] = plots.entropy_vs_eps(results["entropy_in_eps"], out / "entropy_vs_eps.png")
    files["quadrature"] = plots.slopes({f"d={d}": r for d, r in results["quadrature"].items()},
                                       out / "quadrature_rate.png", "quadrature rate of the normalised LSE",
                                       ylabel="sup error")
    files["scaling_law"] = plots.slopes({f"d={d}": r for d, r in results["scaling_law"].items()},
                                        out / "scaling_law.png", "scaling law at ε = N^(−1/d) vs |x|²/12",
                                        ykey="rmse_inviscid", ylabel="RMSE")
    files["scaling_law_viscous"] = plots.slopes({f"d={d}": r for d, r in results["scaling_law"].items()},
                                                out / "scaling_law_viscous_target.png",
                                                "scaling law vs the viscous closed form", ykey="rmse",
                                                ylabel="RMSE")
    files["intrinsic_dimension"] = plots.slopes(results["intrinsic_dimension"], out / "intrinsic_dimension.png",
                                                "atoms on a d-manifold in R^D", ylabel="sup error")
    files["generalization"] = plots.slopes({f"d={d}": r for d, r in results["generalization"].items()},
                                           out / "generalization_rate.png", "held-out RMSE vs n",
                                           xkey="n", ykey="rmse", xlabel="n samples", ylabel="RMSE")
    files["hessian_bound"] = plots.hessian_bound(results["hessian_bound"]["trained"], out / "hessian_bound.png")
    files["eps_tradeoff"] = plots.eps_tradeoff(results["hessian_bound"]["trained"], out / "eps_sweep.png")
    files["robustness"] = plots.robustness(results["robustness"], out / "robustness.png")
    return files


def run(out_dir: str | Path, preset: dict, make_plots: bool = True, log=print) -> dict:
    """Run every reproduction at ``preset`` size, write everything, return the summary."""
    t0 = time.perf_counter()
    results = R.run_all(preset, log=log)
    results["wall_seconds"] = time.perf_counter() - t0
    files = write(results, out_dir, make_plots)
    for name, p in files.items():
        log(f"wrote {p}")
    return summary(results)
