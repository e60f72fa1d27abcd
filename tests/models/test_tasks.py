import argparse

import torch

from hjseq.models import tasks


def test_selective_copying_layout():
    g = torch.Generator().manual_seed(0)
    x, y, mask = tasks.selective_copying(5, 20, n_memorize=4, n_data=8, generator=g)
    assert x.shape == y.shape == (5, 24)
    assert (x[:, 20:] == tasks.MARKER).all() and mask[:, 20:].all() and not mask[:, :20].any()
    for row in range(5):
        data = x[row, :20][x[row, :20] != tasks.BLANK]
        assert data.numel() == 4 and ((data >= 2) & (data < 10)).all()
        assert torch.equal(y[row, 20:], data)  # the data tokens, in order, at the markers


def test_induction_heads_layout():
    g = torch.Generator().manual_seed(1)
    x, y, mask = tasks.induction_heads(6, 12, vocab=16, generator=g)
    assert mask[:, -1].all() and mask.sum() == 6
    for row in range(6):
        trig = (x[row] == 0).nonzero()[:, 0].tolist()
        assert len(trig) == 2 and trig[1] == 11  # once inside, once last
        assert y[row, -1] == x[row, trig[0] + 1]


def test_attention_learns_induction_heads():
    r = tasks.run_task("induction_heads", "attention", steps=200, batch=32, seq_len=16,
                       d_model=32, n_layers=2, seed=0)
    assert r.accuracy > 0.4  # chance is 1/15


def test_bench_tasks_cli_quick(capsys):
    p = argparse.ArgumentParser()
    tasks.configure_parser(p)
    assert tasks.main(p.parse_args(["--quick", "--kinds", "lse,gru"])) == 0
    out = capsys.readouterr().out
    assert "| block | params | selective_copying acc | induction_heads acc |" in out
    assert "| lse |" in out and "| gru |" in out
    assert tasks.main(p.parse_args(["--kinds", "cnn"])) == 2
