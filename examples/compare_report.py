"""Hold every recurrent block against the characteristic ODE it discretizes.

    python examples/compare_report.py                       # writes examples/compare_report.{md,png,json}
    python examples/compare_report.py --out-dir out/ --block HJGRU --length 12

For each block (HJRNN, HJGRU, HJLSTM, HJMamba and HJMamba2 with euler_b, zoh and
exp_trapezoidal; float64, random weights,
a random input) ``hjseq.solver.compare`` integrates the per-token ODE with dopri5 at
rtol 1e-10 and subdivides each token's step m times. The summary table gives the declared
and observed orders and the errors; the plot (of ``--block``) shows discrete vs continuous
trajectories and the error-vs-step line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from hjseq.nn import HJGRU, HJLSTM, HJMamba, HJMamba2, HJRNN
from hjseq.solver import compare, fit_order


def _fmt(v: float) -> str:
    return "exact" if v == math.inf else ("round-off" if math.isnan(v) else f"{v:.2f}")


def build_blocks(seed: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    return {
        "HJRNN": HJRNN(4, 8),
        "HJGRU": HJGRU(4, 8),
        "HJLSTM": HJLSTM(4, 8),
        "HJMamba (euler_b)": HJMamba(4, d_state=4, d_conv=3, expand=2, backend="loop"),
        "HJMamba (zoh)": HJMamba(4, d_state=4, d_conv=3, expand=2, scheme="zoh", backend="loop"),
        "HJMamba2 (euler_b)": HJMamba2(4, d_state=4, d_conv=3, headdim=4, backend="loop"),
        "HJMamba2 (zoh)": HJMamba2(4, d_state=4, d_conv=3, headdim=4, scheme="zoh",
                                   backend="loop"),
        "HJMamba (exp_trapezoidal)": HJMamba(4, d_state=4, d_conv=3, expand=2,
                                             scheme="exp_trapezoidal", backend="loop"),
        "HJMamba2 (exp_trapezoidal)": HJMamba2(4, d_state=4, d_conv=3, headdim=4,
                                               scheme="exp_trapezoidal", backend="loop"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--block", default="HJRNN", help="which block's plot to save")
    parser.add_argument("--length", type=int, default=8, help="tokens in the input")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny problems: threads only add overhead
    blocks = build_blocks(args.seed)
    if args.block not in blocks:
        parser.error(f"--block must be one of {sorted(blocks)}")
    refinements = (1, 2, 4, 8, 16, 32)
    rows = ["| block | scheme | declared order | observed order (fit m = 1..32) | "
            "observed order (fit m = 8..32) | max error, m = 1 (the block) | max error, m = 32 |",
            "|---|---|---:|---:|---:|---:|---:|"]
    reports = {}
    start = time.perf_counter()
    for name, block in blocks.items():
        block = block.double().eval()
        gen = torch.Generator().manual_seed(args.seed + 1)
        x = torch.randn(2, args.length, block.input_size, generator=gen, dtype=torch.float64)
        rep = compare(block, x, refinements=refinements)
        reports[name] = rep
        tail = (float("nan") if math.isnan(rep.observed_order)
                else fit_order([1 / m for m in refinements[-3:]], rep.refinement_error[-3:]))
        rows.append(f"| {name} | `{rep.scheme}` | {_fmt(rep.declared_order)} | "
                    f"{_fmt(rep.observed_order)} | {_fmt(tail)} | {rep.refinement_error[0]:.2e} | "
                    f"{rep.refinement_error[-1]:.2e} |")
    elapsed = time.perf_counter() - start
    summary = "\n".join(rows)
    detail = reports[args.block].table()
    os.makedirs(args.out_dir, exist_ok=True)
    md = os.path.join(args.out_dir, "compare_report.md")
    with open(md, "w") as f:
        f.write(summary + "\n\n" + detail + "\n")
    png = reports[args.block].plot(os.path.join(args.out_dir, "compare_report.png"))
    with open(os.path.join(args.out_dir, "compare_report.json"), "w") as f:
        json.dump({k: r.to_dict() for k, r in reports.items()}, f, indent=2)
    print(summary)
    print()
    print(detail)
    print(f"\nwrote {md}, {png} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
