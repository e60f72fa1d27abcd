"""benchmarks/gpu_check.py: the dry run lists every step and exits 0 without a GPU; the
real run refuses clearly without a CUDA device; the benchmark table covers the rows the
first GPU run must time."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_lists_the_steps_and_exits_zero(tmp_path):
    res = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for i, name in enumerate(["env", "correctness", "registers", "cuda", "sanitizer", "bench"], 1):
        assert f"{i}. {name} (" in res.stdout, res.stdout
    assert "compute-sanitizer --tool racecheck" in res.stdout
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


def test_step_budgets_fit_in_eight_minutes(tmp_path):
    mod = _load("gpu_check")
    assert sum(s.budget_s for s in mod.steps(tmp_path)) <= 8 * 60
    with pytest.raises(SystemExit):
        mod.main(["--dry-run", "--only", "nonsense"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_real_run_without_cuda_says_so(tmp_path, capsys):
    assert _load("gpu_check").main(["--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_benchmark_rows_cover_the_first_gpu_run():
    full = _load("bench_gpu").FULL
    assert {(8, 5120, 2048, 16), (1, 1536, 16384, 16)} <= set(full["selective_scan"])
    assert any(s[3] == 64 for s in full["selective_scan"])               # N = 64
    assert any(s[0] == 1 for s in full["linear_scan"])                   # small batch
    assert any(s[0] == 1 for s in full["causal_conv1d"])
    assert full["selective_state_update"] and full["ssd"] and full["mamba3_siso"]


# tiny versions of every benchmark row, so the calls gpu_check times are checked here
TINY = {"selective_scan": (1, 4, 40, 4), "linear_scan": (1, 4, 40),
        "causal_conv1d": (1, 4, 40, 4), "selective_state_update": (2, 4, 4),
        "ssd": (1, 64, 2, 4, 8), "mamba3_siso": (1, 64, 2, 4, 8)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke test of the benchmark calls")
@pytest.mark.parametrize("op", sorted(TINY))
def test_every_benchmark_call_runs(op, monkeypatch):
    """Each row's call, forward and forward+backward, on tiny CPU inputs through the
    Triton backend (interpreter); a backend that cannot run here must give its reason."""
    pytest.importorskip("triton")
    # keep mamba-ssm's modules out of sys.modules (other tests block its import)
    for name in ("mamba_ssm", "causal_conv1d"):
        monkeypatch.setitem(sys.modules, name, None)
    mod = _load("bench_gpu")
    assert set(TINY) == set(mod.FULL)
    for mode in ("fwd",) if op in mod.FWD_ONLY else ("fwd", "fwd+bwd"):
        calls, moved = mod._case(op, TINY[op], grad=mode == "fwd+bwd", dev="cpu")
        assert moved > 0 and set(calls) == set(mod.BACKENDS[op])
        call, why = calls["triton"]
        assert call is not None, why
        y = call()
        assert torch.isfinite(y.float()).all()
        if mode == "fwd+bwd":
            y.backward(torch.ones_like(y))
        for name, (c, reason) in calls.items():
            assert c is not None or reason, name
    if op == "selective_scan":  # its first row is also timed with autotuning on
        calls, _ = mod._case(op, TINY[op], grad=False, dev="cpu", autotune=True)
        assert calls[mod.AUTOTUNED] == calls["triton"]
