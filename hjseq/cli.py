"""The ``hjseq`` command. Each subcommand lives in its own module, imported lazily so a
missing optional dependency of one command never breaks another. A command module
defines ``configure_parser(parser)`` and ``main(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hjseq.models.train", "train a language model from a config"),
    "generate": ("hjseq.models.generate", "sample text from a checkpoint"),
    "check": ("hjseq.solver.check", "run the PDE-consistency suite"),
    "bench": ("hjseq.bench.cli", "run the kernel benchmarks or the synthetic-task table"),
    "analyze": ("hjseq.analysis.cli", "epsilon-lens analysis of a checkpoint or an LSE toy"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hjseq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    modules = {}
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:  # import only the command being run
            modules[name] = importlib.import_module(module)
            modules[name].configure_parser(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(modules[args.command].main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
