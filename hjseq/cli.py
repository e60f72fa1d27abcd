"""Train, sample, check and analyze sequence models whose blocks are Hamilton–Jacobi discretizations.

Each subcommand lives in its own module, imported lazily so a missing optional dependency
of one command never breaks another. A command module defines ``configure_parser(parser)``
and ``main(args) -> int``.

Errors: a user error (a bad config, path, argument, data or checkpoint) is raised as a
:class:`UserError` (or a :class:`~hjseq.models.config.ConfigError`, or an ``OSError`` about
a file), printed as one or two lines and answered with exit status 2. Anything else is a bug
and keeps its traceback. ``--debug`` or ``HJSEQ_DEBUG=1`` shows the traceback of every error.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

USAGE_ERROR = 2  # exit status of a user error, as argparse uses it
INTERRUPTED = 130  # exit status after Ctrl-C, as a shell reports it

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hjseq.models.train", "train a language model from a config"),
    "generate": ("hjseq.models.generate", "sample text from a checkpoint"),
    "eval": ("hjseq.models.evaluate", "bits per byte (and token perplexity) of a checkpoint on "
                                      "a text file"),
    "check": ("hjseq.solver.check", "run the PDE-consistency suite"),
    "bench": ("hjseq.bench.cli", "run the kernel benchmarks or the synthetic-task table"),
    "analyze": ("hjseq.analysis.cli", "epsilon-lens analysis of a checkpoint or an LSE toy"),
}


class UserError(Exception):
    """Something the user gave is wrong (path, argument, data, checkpoint). The message says
    what, where (file, key or flag) and how to fix it; the CLI prints it without a traceback
    and exits with status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` to every option that has a
    default the help text does not already state (flags and ``None`` defaults excepted)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                or "default" in help_ or not action.option_strings):
            return help_
        return help_ + " (default: %(default)s)"


def debug_requested(argv: list[str]) -> bool:
    """``--debug`` anywhere on the command line, or ``HJSEQ_DEBUG`` set to a non-empty,
    non-zero value."""
    return "--debug" in argv or os.environ.get("HJSEQ_DEBUG", "") not in ("", "0")


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [UserError, FileNotFoundError, IsADirectoryError,
                                        NotADirectoryError, PermissionError]
    config = sys.modules.get("hjseq.models.config")  # ConfigError exists only once imported
    if config is not None:
        types.append(config.ConfigError)
    return tuple(types)


def build_parser(chosen: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The ``hjseq`` parser; only the subcommand ``chosen`` is imported and configured."""
    parser = argparse.ArgumentParser(prog="hjseq", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of every error (also: HJSEQ_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of every error (also: HJSEQ_DEBUG=1)")
        if name == chosen:  # import only the command being run
            modules[name] = importlib.import_module(module)
            modules[name].configure_parser(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    debug = debug_requested(argv)
    try:
        parser, modules = build_parser(chosen if chosen in COMMANDS else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return USAGE_ERROR
        return int(modules[args.command].main(args) or 0)
    except _user_error_types() as e:
        if debug:
            raise
        where = f"hjseq {chosen}" if chosen in COMMANDS else "hjseq"
        print(f"{where}: error: {_message(e)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def _message(e: BaseException) -> str:
    """The error's message; an ``OSError`` as 'PATH: reason'."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror.lower()}"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
