"""benchmarks/bench_gpu.py: without CUDA it says so, writes an empty JSON record set and
exits 0; its shape table covers the issue's target shapes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_target_shapes_are_benchmarked():
    mod = _load()
    assert (8, 5120, 2048, 16) in mod.FULL["selective_scan"]
    assert (1, 1536, 16384, 16) in mod.FULL["selective_scan"]
    assert (8, 1536, 65536) in mod.FULL["linear_scan"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_exits_zero_and_says_so(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert _load().main(["--quick", "--json", str(out)]) == 0
    assert "no CUDA device: GPU benchmarks not run" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["records"] == [] and data["meta"]["skipped"] == "no CUDA device"
