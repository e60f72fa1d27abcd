"""``hjseq analyze`` on the toy problem and on a saved HJLM checkpoint; the example script."""
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from hjseq.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "epsilon_lens.py"


def test_analyze_checkpoint(tmp_path):
    from hjseq.models.lm import HJLM

    cfg = {"d_model": 16, "blocks": [{"kind": "attention", "n_heads": 2}, {"kind": "lse", "n_atoms": 3},
                                     {"kind": "gru"}]}
    HJLM(cfg).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main(["analyze", str(tmp_path / "ckpt"), "--out", str(out), "--seq-len", "12", "--batch", "2"]) == 0
    res = json.loads((out / "analysis.json").read_text())
    assert [b["kind"] for b in res["blocks"]] == ["attention", "lse", "gru"]
    (att,) = res["attention"]
    assert len(att["entropy_per_head"]) == 2 and all(0 < h <= 1 + 1e-6 for h in att["normalized_entropy_per_head"])
    (units,) = res["lse_units"]
    assert units["bound_violated"] is False and 0 < units["max_ratio_to_bound"] <= 1
    trop = res["tropical"]
    assert trop["report"]["lse_bound"] == pytest.approx(32 * 1.0 * torch.log(torch.tensor(3.0)).item())
    assert 0 <= trop["next_token_agreement"] <= 1 and trop["max_abs_logit_change"] > 0
    assert (out / "attention_entropy.png").stat().st_size > 0
    # a `hjseq train --out` directory holds the model under model/: same analysis
    (tmp_path / "run").mkdir()
    (tmp_path / "ckpt").rename(tmp_path / "run" / "model")
    out2 = tmp_path / "out2"
    assert main(["analyze", str(tmp_path / "run"), "--out", str(out2), "--seq-len", "12", "--batch", "2",
                 "--no-plots"]) == 0
    assert json.loads((out2 / "analysis.json").read_text()) == res


def test_analyze_needs_exactly_one_source(tmp_path, capsys):
    assert main(["analyze", "--out", str(tmp_path)]) == 2  # a user error: one line, status 2
    assert "either a RUN_DIR" in capsys.readouterr().err


def test_example_script_small(tmp_path, monkeypatch):
    out = tmp_path / "lens"
    monkeypatch.setattr(sys, "argv", ["epsilon_lens.py", "--size", "small", "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert e.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fold_count_sequence"] == [5, 3, 1]
    assert summary["hessian_bound_violations"] == 0
    for name in ("bifurcation", "quadrature_rate", "scaling_law", "generalization_rate", "hessian_bound",
                 "robustness", "eps_sweep", "intrinsic_dimension", "entropy_landscape"):
        assert (out / f"{name}.png").stat().st_size > 0
