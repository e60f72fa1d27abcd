"""The ε lens, reproduced: one command writes every figure and a JSON of measured values.

    python examples/epsilon_lens.py                      # full sizes  -> out/epsilon_lens/
    python examples/epsilon_lens.py --size small --out /tmp/lens   # the test-suite sizes (~15 s)

Figures (PNG) in the output directory:
  bifurcation.png            critical points of H(π(x; ε)) vs ε for the 6-atom configuration
                             (5 → 3 → 1, folds near ε ≈ 0.16 and 0.84)
  entropy_landscape.png      H(π(x; ε)) over x at several ε
  entropy_vs_eps.png         H nondecreasing in ε, 0 → log N
  quadrature_rate.png        normalised-LSE quadrature error vs N, d = 1, 2, 4
  scaling_law.png            RMSE at ε = N^(−1/d) vs N (inviscid target |x|²/12)
  scaling_law_viscous_target.png   the same against the viscous closed form
  intrinsic_dimension.png    atoms on d-manifolds (linear, curved) in R^D: slope follows d
  generalization_rate.png    held-out RMSE vs n, d = 1, 2, 3
  hessian_bound.png          max ‖∇²f‖₂ vs max|W|²/ε on trained LSE models
  eps_sweep.png              accuracy vs curvature across ε
  robustness.png             worst-case change under ‖δ‖ ≤ r vs ε (LSE and attention)
and results.json (all data) + summary.json (headline numbers).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from hjseq.analysis import report
from hjseq.analysis import reproduce as R


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/epsilon_lens", help="output directory (default: out/epsilon_lens)")
    p.add_argument("--size", choices=("small", "full"), default="full")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on a busy machine: the problems are small)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    summary = report.run(args.out, R.FULL if args.size == "full" else R.SMALL, make_plots=not args.no_plots)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
