"""The examples run as documented (at small sizes where they take options) and produce
what the README says they produce."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(script: str, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_reproduce_layers_all_within_tolerance():
    out = run("reproduce_layers.py")
    assert "all within" in out
    for block in ("HJRNN", "HJGRU", "HJLSTM", "HJMamba", "HJAttention", "LSELayer"):
        assert block in out


def test_compare_report_writes_table_plot_and_json(tmp_path):
    run("compare_report.py", "--out-dir", str(tmp_path), "--length", "6")
    files = {p.suffix for p in tmp_path.iterdir()}
    assert {".md", ".png", ".json"} <= files
    table = next(tmp_path.glob("*.md")).read_text()
    for block in ("HJRNN", "HJGRU", "HJLSTM", "HJMamba"):
        assert block in table
    json.loads(next(tmp_path.glob("*.json")).read_text())  # valid JSON


@pytest.mark.parametrize("kinds", ["gru,mamba"])
def test_compare_blocks_quick(tmp_path, kinds):
    out = run("compare_blocks.py", "--quick", "--kinds", kinds, "--out", str(tmp_path))
    for kind in kinds.split(","):
        assert kind in out
