"""Fixtures of the CLI tests: a small text corpus and the tiny config."""
from pathlib import Path

import pytest

from _cli_helpers import TINY


@pytest.fixture(scope="session")
def corpus(corpus_dir: Path) -> Path:
    """The small standard-library corpus of the root conftest."""
    return corpus_dir


@pytest.fixture
def tiny_config(tmp_path: Path):
    """``tiny_config(**replace)``: write the tiny config (with ``old=new`` text replacements
    given as pairs) to a TOML file and return its path."""
    def make(name: str = "tiny.toml", *replace: tuple[str, str], extra: str = "") -> Path:
        text = TINY
        for old, new in replace:
            assert old in text
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_text(text + extra)
        return path
    return make
