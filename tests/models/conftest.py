from pathlib import Path

import pytest
import torch

from hjseq.models.config import load_config


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is as fast on an idle machine and avoids
    OpenMP spin-wait slowdowns (20x measured) on a machine shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_run(corpus_dir: Path):
    """``tiny_run(**train_overrides)``: a 2-block model (GRU + LSE MLP) small enough for a
    test to train in a few seconds, on the small corpus."""
    return lambda **train: _tiny_run(corpus_dir, **train)


def _tiny_run(corpus_dir: Path, **train):
    t = dict(steps=6, batch_size=4, seq_len=32, warmup_steps=2, eval_interval=3,
             eval_batches=1, log_interval=1, checkpoint_interval=100, sample_chars=20,
             val_fraction=0.3, data=str(corpus_dir))
    t.update(train)
    return load_config({"model": {"d_model": 16, "blocks": [
        {"kind": "gru"}, {"kind": "lse", "n_units": 16, "n_atoms": 3, "eps": 0.5}]},
        "train": t})
