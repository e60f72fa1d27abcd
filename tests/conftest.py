import os
import shutil
import sysconfig
from pathlib import Path

# Without a CUDA device, Triton kernels run under its CPU interpreter. @triton.jit reads
# TRITON_INTERPRET when a kernel is decorated, so it must be set before any test module
# (of any directory) imports a kernel: here, in the root conftest, which loads first.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Seeded randomness everywhere; hypothesis runs derandomized in CI for reproducibility.
try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    settings.register_profile("dev", deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# A few standard-library files (~90 KB): a small, real byte corpus that loads in milliseconds.
_CORPUS_FILES = ["textwrap.py", "json/__init__.py", "json/decoder.py", "json/encoder.py",
                 "json/scanner.py", "json/tool.py", "colorsys.py", "bisect.py", "keyword.py"]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A directory holding copies of ``_CORPUS_FILES`` from this Python's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("corpus")
    for rel in _CORPUS_FILES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, out / rel)
    return out
