"""``hjseq check``: the PDE-consistency suite of issue 3 as a command.

Runs every property of :mod:`hjseq.solver.properties` (float64), prints
``property | measured | tolerance | pass/fail``, optionally writes JSON (``--json PATH``),
and exits 1 if any row fails (a property that raises — e.g. the core blocks are missing —
is a failing row with the error, never a skip).

    hjseq check                       # all properties
    hjseq check --only 3 --only 8     # a subset
    hjseq check --json report.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
import traceback

import torch

from .properties import PROPERTIES, Row


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--only", metavar="N", type=int, action="append",
                        help=f"run only property N (repeatable; 1..{len(PROPERTIES)})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the problems are small, and extra "
                             "threads only add contention)")


def run_properties(only: list[int] | None = None) -> tuple[list[Row], dict[int, float]]:
    """Run the selected properties (all if None). Returns the rows and seconds per property.
    An exception inside a property becomes one failing row carrying the error."""
    ids = sorted(PROPERTIES) if not only else only
    unknown = [i for i in ids if i not in PROPERTIES]
    if unknown:
        raise ValueError(f"--only must name properties in 1..{len(PROPERTIES)}, got {unknown}")
    rows: list[Row] = []
    seconds: dict[int, float] = {}
    for i in ids:
        title, fn = PROPERTIES[i]
        start = time.perf_counter()
        try:
            rows.extend(fn())
        except Exception as exc:  # report, don't hide: the row fails with the reason
            rows.append(Row(i, f"{title}: raised {type(exc).__name__}", math.nan, "no error",
                            False, "".join(traceback.format_exception_only(exc)).strip()))
        seconds[i] = time.perf_counter() - start
    return rows, seconds


def format_table(rows: list[Row]) -> str:
    """Markdown table ``# | property | measured | tolerance | result``."""
    lines = ["| # | property | measured | tolerance | result |", "|---:|---|---:|---|---|"]
    for r in rows:
        measured = "n/a" if math.isnan(r.measured) else f"{r.measured:.3g}"
        name = r.name.replace("|", "\\|")  # keep |x| from splitting the markdown cell
        lines.append(f"| {r.prop} | {name} | {measured} | {r.tolerance} | "
                     f"{'pass' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, seconds = run_properties(args.only)
    total = time.perf_counter() - start
    print(format_table(rows))
    failed = [r for r in rows if not r.passed]
    for r in failed:
        if r.detail:
            print(f"\nFAIL property {r.prop} ({r.name}): {r.detail}")
    print(f"\n{len(rows) - len(failed)}/{len(rows)} rows pass, {len(seconds)} properties, "
          f"{total:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"passed": not failed, "seconds": total,
                       "seconds_per_property": {str(k): v for k, v in seconds.items()},
                       "rows": [r.to_dict() for r in rows]}, f, indent=2)
            f.write("\n")
    return 1 if failed else 0
