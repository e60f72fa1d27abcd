"""Helpers for tests that run the real ``hjseq`` command in a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A model small enough to train a few steps in a second or two.
TINY = """
[model]
d_model = 16
blocks = [{kind = "gru"}, {kind = "lse", n_units = 16, n_atoms = 3}]
[train]
steps = 3
batch_size = 4
seq_len = 32
warmup_steps = 1
eval_interval = 1000
eval_batches = 1
log_interval = 1
checkpoint_interval = 1000
sample_chars = 8
val_fraction = 0.3
threads = 1
"""


def hjseq(*args: str, cwd: Path | None = None, env: dict | None = None,
          timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m hjseq ARGS`` with this checkout first on the path; text output captured."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    full_env.pop("HJSEQ_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "hjseq", *map(str, args)], cwd=cwd or REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2, no traceback, a message of at most two lines naming every ``names``."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert 1 <= len(lines) <= 2, err
    for name in names:
        assert name in err, (name, err)
    return err


