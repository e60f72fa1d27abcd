"""Fixtures of the CLI tests: a small text corpus and the tiny config."""
import shutil
import sysconfig
from pathlib import Path

import pytest

from _cli_helpers import TINY

_FILES = ["textwrap.py", "json/__init__.py", "json/decoder.py", "json/encoder.py",
          "json/scanner.py", "colorsys.py", "bisect.py", "keyword.py"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A directory of a few standard-library files (~80 KB of text)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("corpus")
    for rel in _FILES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, out / rel)
    return out


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
