"""Help: a one-line program description; every option has help text and shows its default;
valid choices are listed."""
import argparse

import pytest

from _cli_helpers import hjseq


def test_program_description_is_one_line():
    proc = hjseq("--help")
    assert proc.returncode == 0
    desc = proc.stdout.split("\n\n")[1]
    assert "\n" not in desc.strip() and desc.strip().endswith(".") and "``" not in desc


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _options(sub)
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield parser.prog, action


@pytest.mark.parametrize("command", ["train", "generate", "analyze", "bench"])
def test_every_option_has_help_and_its_default(command, monkeypatch):
    from hjseq.cli import HelpFormatter, build_parser

    monkeypatch.setattr("sys.argv", ["hjseq", command, "tasks"])  # bench configures tasks
    parser, _ = build_parser(command)
    fmt = HelpFormatter("hjseq")
    seen = 0
    for prog, action in _options(parser):
        seen += 1
        text = fmt._get_help_string(action)
        assert text.strip(), f"{prog} {action.option_strings}: no help"
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        assert flag or action.required or "default" in text, f"{prog} {action.option_strings}: default not shown"
    assert seen >= 5


def test_bench_tasks_help_lists_the_kinds_and_tasks():
    from hjseq.models.tasks import KINDS, TASKS

    proc = hjseq("bench", "tasks", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "from: " + ", ".join(KINDS) in text and "from: " + ", ".join(TASKS) in text
    gen = hjseq("generate", "--help")
    assert "number of bytes (tokens) to generate (default: 300)" in " ".join(gen.stdout.split())
