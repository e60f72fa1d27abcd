"""``hjseq bench``: the kernel benchmarks or the synthetic-task table.

    hjseq bench kernels [--quick] [--only NAME]   # runs benchmarks/run.py (source checkout)
    hjseq bench tasks [...]                       # hjseq.models.tasks (its own options)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def runner_path() -> Path:
    """``benchmarks/run.py`` of the source checkout this package was installed from."""
    root = Path(__file__).resolve().parent.parent.parent  # hjseq/bench/cli.py -> checkout
    path = root / "benchmarks" / "run.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"hjseq bench kernels needs the benchmarks/ folder of a source checkout, and "
            f"{path} does not exist (hjseq is installed from {root}). Clone the repository "
            f"and install it with `pip install -e .`, or run `python benchmarks/run.py` there.")
    return path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from hjseq.cli import HelpFormatter

    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    k = sub.add_parser("kernels", help="time the kernel ops against their peers",
                       description="Time the kernel ops against their peers "
                       "(benchmarks/run.py of the source checkout).",
                       formatter_class=HelpFormatter)
    k.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    k.add_argument("--only", metavar="NAME", help="comma-separated benchmark names "
                   "(e.g. linear_scan,recurrent; default: all)")
    k.add_argument("--out", help="output folder (default: out/bench in the checkout)")
    t = sub.add_parser("tasks", help="synthetic-task table (options: hjseq bench tasks -h)",
                       formatter_class=HelpFormatter)
    if "tasks" in sys.argv[1:]:  # the tasks module is imported only when it is asked for
        from hjseq.models import tasks

        tasks.configure_parser(t)
    else:  # called programmatically: parse the rest in main()
        t.add_argument("task_args", nargs=argparse.REMAINDER)


def main(args: argparse.Namespace) -> int:
    if args.bench_command == "kernels":
        runner = runner_path()  # a missing checkout is a user error (the CLI prints it)
        cmd = [sys.executable, str(runner)]
        if args.quick:
            cmd.append("--quick")
        if args.only:
            cmd += ["--only", args.only]
        if args.out:
            cmd += ["--out", args.out]
        return subprocess.call(cmd, cwd=runner.parent.parent)
    if args.bench_command == "tasks":
        from hjseq.models import tasks  # imported only for this subcommand

        if hasattr(args, "task_args"):
            p = argparse.ArgumentParser(prog="hjseq bench tasks")
            tasks.configure_parser(p)
            args = p.parse_args(args.task_args)
        return int(tasks.main(args) or 0)
    print("usage: hjseq bench {kernels,tasks} ...  (hjseq bench kernels --quick)",
          file=sys.stderr)
    return 2
