"""``hjseq analyze RUN_DIR`` on what ``hjseq train`` writes, for every recurrent block kind:
a non-empty report (step Δ, decay spectrum, deviation from the characteristic ODE, ε noise
vs validation bpb) and one labeled figure per block kind, at least 800 px wide."""
import json
import math
import re
from pathlib import Path

from _cli_helpers import REPO, hjseq

MIXED = """
[model]
d_model = 16
blocks = [{kind = "mamba", d_state = 4}, {kind = "gru"}, {kind = "lstm"},
          {kind = "rnn", dt = 0.5}, {kind = "attention", n_heads = 2}]
[train]
steps = 3
batch_size = 4
seq_len = 32
warmup_steps = 1
eval_interval = 3
eval_batches = 1
val_fraction = 0.3
sample_chars = 4
threads = 1
"""
KINDS = ("mamba", "gru", "lstm", "rnn")


def test_analyze_the_run_directory_training_writes(corpus, tmp_path):
    import matplotlib.image

    (tmp_path / "mixed.toml").write_text(MIXED)
    train = hjseq("train", "mixed.toml", "--data", corpus, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    run = tmp_path / "runs" / "mixed"  # the default output directory, as in the README
    proc = hjseq("analyze", "runs/mixed", "--seq-len", "24", "--batch", "2", "--ode-tokens", "4",
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run / "analysis"
    rep = json.loads((out / "analysis.json").read_text())
    assert "validation split" in rep["input"]
    layers = rep["recurrent"]["layers"]
    assert [r["kind"] for r in layers] == list(KINDS)
    for r in layers:
        st, dec, ode = r["step"], r["decay"], r["ode"]
        assert 0 < st["q05"] <= st["median"] <= st["q95"] and st["n"] > 0
        assert 0 <= dec["min"] <= dec["max"] and math.isfinite(dec["median"])
        assert abs(sum(dec["histogram"]["density"]) - 1) < 1e-6
        assert len(ode["global_error"]) == 5 and ode["global_error"][0] == 0
        assert ode["global_max_error"] > 0 and ode["declared_order"] == 1
    assert layers[3]["step"]["what"].startswith("effective step")  # RNN: constant spec step
    noise = rep["recurrent"]["noise"]
    assert noise["eps"][0] == 0 and len(noise["bpb"]) == len(KINDS) + 1
    base = {row[0] for row in noise["bpb"].values()}
    assert len(base) == 1  # ε = 0 is the same noiseless model in every row
    big = noise["bpb"]["all recurrent layers"]
    assert big[-1] != big[0]  # ε = 1 on every recurrent layer changes the prediction
    assert rep["attention"] and rep["tropical"]
    for kind in KINDS:
        img = matplotlib.image.imread(out / f"recurrent_{kind}.png")
        assert img.shape[1] >= 800 and img.shape[0] >= 600
    assert matplotlib.image.imread(out / "attention_entropy.png").shape[1] >= 800
    assert "ODE max err" in proc.stdout and "validation bpb vs ε" in proc.stdout


def test_readme_commands_point_at_what_training_writes():
    text = (REPO / "README.md").read_text()
    train = re.search(r"^hjseq train (examples/configs/small\.toml)", text, re.M)
    assert train, "README: the main job's command"
    run_dir = f"runs/{Path(train.group(1)).stem}"
    assert f"hjseq analyze {run_dir}" in text
    assert f"hjseq train --resume {run_dir}" in text
    assert "--resume --out" not in text and "out/small" not in text
