"""Resume through the real CLI: one documented form, printed by the interrupt message; a
config path where a run is expected is explained; a resumed run keeps the step budget it
was started with (``--max-steps`` included) and only reports a result at that budget."""
import json
import signal
import subprocess
import sys
import time

from _cli_helpers import REPO, assert_user_error, hjseq


def test_config_given_to_resume_is_explained(tiny_config):
    cfg = tiny_config()
    proc = hjseq("train", "--resume", cfg)
    assert_user_error(proc, str(cfg), "is a config file, not a checkpoint",
                      "hjseq train --resume RUN_DIR")
    assert "Unpickling" not in proc.stderr


def test_sigint_then_the_printed_command_reaches_the_budget(tiny_config, corpus, tmp_path):
    import os

    cfg = tiny_config()  # its [train].steps is 3: the run below is started with --max-steps
    out = tmp_path / "run"
    budget = 600
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hjseq", "train", str(cfg), "--data",
                             str(corpus), "--out", str(out), "--max-steps", str(budget)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    stopped = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert 2 <= stopped < budget
    line = next(ln for ln in err.splitlines() if "continue with:" in ln)
    command = line.split("continue with:")[1].split()
    assert command == ["hjseq", "train", "--resume", str(out)]
    assert not (out / "summary.json").exists()

    # the README's other form, CONFIG --resume, also continues to the run's own budget
    # (not the config's steps = 3, which lies behind the checkpoint)
    res = hjseq("train", cfg, "--resume", "--out", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming at step {stopped} of {budget}" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == budget
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == list(range(1, budget + 1))

    # resuming the finished run with the printed command trains nothing and says so
    again = hjseq(*command[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already reached its budget" in again.stderr
    # a budget below the checkpoint's step is refused, naming the flag
    assert_user_error(hjseq(*command[1:], "--max-steps", "5", cwd=tmp_path),
                      "--max-steps", f"step {budget}")
