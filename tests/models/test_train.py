import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hjseq.cli import main as cli_main
from hjseq.models import data as D
from hjseq.models.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from hjseq.models.config import TrainConfig
from hjseq.models.train import lr_factor, train

REPO = Path(__file__).resolve().parents[2]


def test_resume_after_ctrl_c_continues_exactly(tiny_run, tmp_path):
    run = tiny_run()
    full = train(run, tmp_path / "full", stream=open(os.devnull, "w"))
    assert not full.interrupted and sorted(full.losses) == list(range(1, 7))

    def ctrl_c_at_3(step, loss):
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    part = train(run, tmp_path / "part", stream=open(os.devnull, "w"), on_step=ctrl_c_at_3)
    assert part.interrupted and part.step == 3  # the step in flight finished, then it stopped
    assert load_checkpoint(tmp_path / "part")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    rest = train(run, tmp_path / "part", resume=True, stream=open(os.devnull, "w"))
    assert sorted(rest.losses) == [4, 5, 6]
    # the resumed run's losses are the uninterrupted run's, bit for bit
    assert [part.losses[s] for s in (1, 2, 3)] == [full.losses[s] for s in (1, 2, 3)]
    assert [rest.losses[s] for s in (4, 5, 6)] == [full.losses[s] for s in (4, 5, 6)]
    assert rest.val_bpb == full.val_bpb
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_killed_checkpoint_write_leaves_previous_intact(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(4.0)})
    # a child process starts replacing it with a large checkpoint and is SIGKILLed halfway
    code = textwrap.dedent(f"""
        import os, signal
        from hjseq.models.checkpoint import atomic_write
        def write(f):
            f.write(b"x" * 1_000_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            f.write(b"y" * 1_000_000)
        atomic_write({str(path)!r}, write)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1_000_000  # killed mid-write
    ck = load_checkpoint(path, require=())
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.arange(4.0))
    # an exception during the write also keeps the old file and removes the temp file
    with pytest.raises(RuntimeError):
        atomic_write(path, lambda f: (f.write(b"z"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert load_checkpoint(path, require=())["step"] == 1
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1


def test_train_then_generate_end_to_end(corpus_dir, tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(textwrap.dedent("""
        [model]
        d_model = 16
        blocks = [{kind = "attention", n_heads = 2}, {kind = "lse", n_units = 16}]
        [train]
        steps = 4
        batch_size = 4
        seq_len = 32
        warmup_steps = 1
        eval_interval = 4
        eval_batches = 1
        val_fraction = 0.3
        sample_chars = 16
    """))
    out = tmp_path / "run"
    assert cli_main(["train", str(cfg), "--data", str(corpus_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "bits/byte" in printed.out and "unigram baseline" in printed.out and "sample:" in printed.out
    assert "loss" in printed.err and "tok/s" in printed.err and "ETA" in printed.err  # progress bar
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 4 * 32
    assert 0 < summary["val_bpb"] < 10 and 0 < summary["unigram_bpb"] < 8
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "model" / "model.safetensors").is_file()
    assert cli_main(["generate", "--checkpoint", str(out), "--prompt", "def f(", "-n", "24",
                     "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def f(") and len(text.encode()) > len("def f(") + 10
    assert cli_main(["generate", "--checkpoint", str(out), "--prompt", "def f(", "-n", "24",
                     "--seed", "3"]) == 0
    assert capsys.readouterr().out == text  # seeded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tiny_run, tmp_path):
    run = tiny_run(steps=3, eval_interval=3)
    single = train(run, tmp_path / "single", stream=open(os.devnull, "w"))
    cfg = tmp_path / "ddp.json"
    cfg.write_text(json.dumps(run.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
         "-m", "hjseq", "train", str(cfg), "--out", str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}  # rank 0 alone writes
    assert sorted(losses) == [1, 2, 3]
    for s in (1, 2, 3):
        assert losses[s] == pytest.approx(single.losses[s], rel=1e-5, abs=1e-6)
    val = [r["val_bpb"] for r in rows if "val_bpb" in r]
    assert val == [pytest.approx(single.val_bpb, rel=1e-5)]
    assert load_checkpoint(tmp_path / "ddp")["world_size"] == 2


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)
    assert f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_batches_are_a_function_of_step_and_shard_exactly():
    data = torch.arange(1000, dtype=torch.int64).to(torch.uint8)
    whole = D.train_batch(data, 5, 8, 16, seed=1)
    again = D.train_batch(data, 5, 8, 16, seed=1)
    assert torch.equal(whole[0][0], again[0][0])
    assert not torch.equal(whole[0][0], D.train_batch(data, 6, 8, 16, seed=1)[0][0])
    x, y = whole[0]
    assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])
    shards = [D.train_batch(data, 5, 8, 16, 1, rank=r, world_size=2, accum_steps=2)
              for r in range(2)]
    assert torch.equal(torch.cat([xb for s in shards for xb, _ in s]), x)
    with pytest.raises(ValueError, match="divisible by world_size"):
        D.train_batch(data, 0, 6, 16, 1, world_size=4)


def test_corpus_split_and_unigram_baseline(corpus_dir):
    c = D.load_corpus(corpus_dir, val_fraction=0.3)
    assert c.n_files == 9 and c.train.numel() > c.val.numel() > 0
    again = D.load_corpus(corpus_dir, val_fraction=0.3)
    assert torch.equal(c.train, again.train) and torch.equal(c.val, again.val)
    # the unigram baseline is the cross entropy of smoothed train byte frequencies on val
    two = torch.tensor([65, 65, 66, 66], dtype=torch.uint8)  # p(A) = p(B) = 3/260
    assert D.unigram_bpb(two, two) == pytest.approx(-torch.log2(torch.tensor(3 / 260)).item())
    root, files = D.stdlib_files()
    assert files == sorted(files) and not any("site-packages" in f.parts for f in files)
    with pytest.raises(D.DataError, match="--data .*nope: no such file"):
        D.load_corpus(corpus_dir / "nope")
