"""``hjseq eval``: bits per byte of a checkpoint on a file, against the trainer's own
validation figure, and the whole-text window cover."""
import json
import math

import pytest
import torch

from hjseq.cli import main as cli
from hjseq.models import data as D
from hjseq.models.evaluate import (evaluate_text, load_model_and_tokenizer, score_windows,
                                   window_offsets)
from hjseq.models.train import train


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe:300"])
def test_eval_equals_trainer_validation(tmp_path, tiny_run, capsys, tokenizer):
    run = tiny_run(tokenizer=tokenizer, steps=2, eval_interval=2, eval_batches=2)
    res = train(run, tmp_path / "run")
    corpus = D.load_corpus(run.train.data, run.train.val_fraction)
    val = tmp_path / "val.txt"
    val.write_bytes(bytes(corpus.val.numpy()))
    n = run.train.eval_batches * run.train.batch_size
    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(val), "--json",
                "--seq-len", str(run.train.seq_len), "--windows", str(n),
                "--batch-size", str(run.train.batch_size)]) == 0
    cap = capsys.readouterr()
    got = json.loads(cap.out)
    assert got["windows"] == n and got["tokens"] == n * run.train.seq_len
    assert got["bpb"] == pytest.approx(res.val_bpb, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(got["nats"] / got["tokens"]))
    assert "eval: [" in cap.err  # the progress bar
    if tokenizer != "bytes":
        assert got["bytes"] > got["tokens"]  # subword tokens stand for several bytes


def test_whole_text_scores_every_token_once(tmp_path, corpus_dir):
    from hjseq.models.lm import HJLM

    torch.manual_seed(0)
    HJLM({"d_model": 8, "blocks": [{"kind": "gru"}]}).save_pretrained(tmp_path / "m")
    model, tok = load_model_and_tokenizer(tmp_path / "m")
    raw = (corpus_dir / "bisect.py").read_bytes()[:1000]
    got = evaluate_text(model, tok, raw, seq_len=64, batch_size=3, progress=False)
    # every token but the first is predicted once; the last window ends at the text's end
    assert got["tokens"] == len(raw) - 1 and got["bytes"] == len(raw) - 1
    offsets = window_offsets(len(raw), 64)
    assert int(offsets[-1]) == len(raw) - 65
    # the same sum, token by token, from one forward over each window
    ids = tok.encode_bytes(raw)
    seen, nats = set(), 0.0
    with torch.no_grad():
        for o in offsets.tolist():
            logp = torch.log_softmax(model(ids[None, o:o + 64].long())[0].double(), -1)
            for j in range(64):
                if o + j + 1 not in seen:
                    seen.add(o + j + 1)
                    nats -= float(logp[j, ids[o + j + 1]])
    assert got["nats"] == pytest.approx(nats, rel=1e-6)
    # score_windows with explicit byte lengths counts bytes, not tokens
    s = score_windows(model, ids, offsets[:1], 64, torch.full((256,), 2))
    assert s.bytes == 2 * s.tokens == 128


def test_eval_errors(tmp_path, capsys):
    from hjseq.models.lm import HJLM

    HJLM({"d_model": 8, "blocks": [{"kind": "gru"}]}).save_pretrained(tmp_path / "m")
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    assert cli(["eval", "--checkpoint", str(tmp_path / "m"), "--data", str(tmp_path / "no")]) == 2
    assert "--data" in capsys.readouterr().err
    assert cli(["eval", "--checkpoint", str(tmp_path / "m"), "--data", str(short)]) == 2
    assert "fewer than seq_len + 1" in capsys.readouterr().err
    assert cli(["eval", "--checkpoint", str(tmp_path / "none"), "--data", str(short)]) == 2


def test_analyze_reads_with_the_checkpoint_tokenizer(tmp_path, tiny_run, capsys):
    """``hjseq analyze`` on a BPE run: validation windows and ``--text`` are encoded with the
    run's tokenizer, and the noise sweep's ε = 0 bpb is the bits per byte of those windows
    (nats over the bytes the target tokens stand for), as ``hjseq eval`` counts them."""
    run = tiny_run(tokenizer="bpe:300", steps=2, eval_interval=2)
    train(run, tmp_path / "run")
    out = tmp_path / "lens"
    assert cli(["analyze", str(tmp_path / "run"), "--out", str(out), "--seq-len", "16",
                "--batch", "3", "--ode-tokens", "2", "--no-plots"]) == 0
    got = json.loads((out / "analysis.json").read_text())
    assert got["tokenizer"] == str(tmp_path / "run" / "model" / "tokenizer.json")
    assert got["input"].startswith("3 windows of 16 tokens of the validation split")
    model, tok = load_model_and_tokenizer(tmp_path / "run")
    corpus = D.load_corpus(run.train.data, run.train.val_fraction)
    ids = tok.encode_bytes(bytes(corpus.val.numpy()))
    offsets = D.val_offsets(ids, 3, 16)
    want = score_windows(model.eval(), ids, offsets, 16, tok.byte_lengths)
    assert want.bytes > want.tokens  # the windows hold multi-byte tokens
    (row,) = got["recurrent"]["noise"]["bpb"].values()  # one recurrent layer (the GRU)
    assert got["recurrent"]["noise"]["eps"][0] == 0.0
    assert row[0] == pytest.approx(want.bpb, rel=1e-5)

    assert cli(["analyze", str(tmp_path / "run"), "--out", str(out), "--text",
                "def main():\n    return 0\n", "--ode-tokens", "2", "--no-plots"]) == 0
    got = json.loads((out / "analysis.json").read_text())
    n_tokens = len(tok.encode("def main():\n    return 0\n"))
    assert got["input"] == "--text" and got["recurrent"]["noise"]["tokens"] == n_tokens - 1
    assert n_tokens < len("def main():\n    return 0\n")
