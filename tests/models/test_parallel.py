"""DDP and FSDP under torchrun (2 CPU processes, gloo) against one process with the same
global batch, and a sharded checkpoint resumed on another number of processes (2 → 1,
1 → 2, 2 → 4)."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from hjseq.models import parallel as P
from hjseq.models.config import load_config
from hjseq.models.lm import HJLM
from hjseq.models.train import make_optimizer, train

# one optimizer step of these tiny models sums a few hundred float32 terms per gradient in
# another order on 2 processes: the losses agree to float32 rounding, not bit for bit
RTOL = 2e-5

_WORKER = '''
import json, os, signal, sys
import torch.distributed as dist
from hjseq.models.config import load_config
from hjseq.models.train import train
runs = json.loads(open(sys.argv[1]).read())
out = {}
for name, (cfg, path, stop_at, resume) in runs.items():
    # Ctrl-C on rank 0 after step `stop_at`: every rank stops, and a checkpoint is written
    stop = lambda step, loss: os.kill(os.getpid(), signal.SIGINT) if step == stop_at else None
    res = train(load_config(cfg), path, on_step=stop, resume=resume)
    out[name] = {str(k): v for k, v in res.losses.items()}
    out[name + "_val"] = res.val_bpb
if not dist.is_initialized() or dist.get_rank() == 0:
    with open(sys.argv[2], "w") as f:
        f.write(json.dumps(out))
if dist.is_initialized():
    dist.destroy_process_group()
# skip the interpreter's teardown: a rank once aborted there ("terminate called without an
# active exception") after its work was done, under a full suite's load
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
'''


def _torchrun(tmp_path: Path, runs: dict, nproc: int | None = 2) -> dict:
    """Run ``runs`` ({name: (config, out_dir, stop_at, resume)}) in one launch of ``nproc``
    processes (None: a plain one-process run, no torchrun); the losses and val bpb."""
    tag = "single" if nproc is None else str(nproc)
    spec, result = tmp_path / f"runs{tag}.json", tmp_path / f"result{tag}.json"
    script = tmp_path / "w.py"
    spec.write_text(json.dumps(runs))
    script.write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [] if nproc is None else ["-m", "torch.distributed.run",
                                       f"--nproc_per_node={nproc}", "--standalone"]
    proc = subprocess.run(
        [sys.executable, *launch, str(script), str(spec), str(result)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[:2000] + "\n...\n" + proc.stderr[-3000:]
    return json.loads(result.read_text())


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=RTOL), k


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir):
    """A one-process FSDP run stopped at step 3 of 5, then one torchrun launch of 2
    processes: FSDP (with gradient accumulation) and DDP, a 2-process FSDP run stopped at
    step 3 of 5, and the 1-process run resumed on 2 processes."""
    import shutil

    tmp = tmp_path_factory.mktemp("dist")

    def cfg(parallel, steps, **kw):
        t = dict(steps=steps, batch_size=4, seq_len=32, warmup_steps=2, eval_interval=2,
                 eval_batches=1, log_interval=1, checkpoint_interval=2, sample_chars=8,
                 val_fraction=0.3, data=str(corpus_dir), parallel=parallel, threads=1)
        t.update(kw)
        return {"model": {"d_model": 16, "blocks": [
            {"kind": "gru"}, {"kind": "attention", "n_heads": 2},
            {"kind": "lse", "n_units": 16, "n_atoms": 3, "eps": 0.5}]}, "train": t}

    # the cut runs resume on 1, 2 and 4 processes: a global batch of 8 in 2 micro-batches
    cut = cfg("fsdp", 5, accum_steps=2, batch_size=8)
    _torchrun(tmp, {"cut1": (cut, str(tmp / "cut1"), 3, False)}, nproc=None)
    shutil.copytree(tmp / "cut1", tmp / "from1")
    spec = {"fsdp": (cfg("fsdp", 3, accum_steps=2), str(tmp / "fsdp"), None, False),
            "ddp": (cfg("ddp", 3), str(tmp / "ddp"), None, False),
            "fsdp_cut": (cfg("fsdp", 5, accum_steps=2), str(tmp / "fsdp_cut"), 3, False),
            "cut2": (cut, str(tmp / "cut2"), 3, False),
            "from1": (cut, str(tmp / "from1"), None, True)}
    return tmp, cfg, _torchrun(tmp, spec)


def _single(cfg: dict, out: Path):
    torch.set_num_threads(1)
    return train(load_config(cfg), out)


def test_fsdp_and_ddp_equal_one_process(runs, tmp_path):
    tmp, cfg, got = runs
    for mode, extra in (("fsdp", {"accum_steps": 2}), ("ddp", {})):
        one = _single(cfg(mode, 3, **extra), tmp_path / mode)
        _close(got[mode], {str(k): v for k, v in one.losses.items()})
        assert got[mode + "_val"] == pytest.approx(one.val_bpb, rel=RTOL)
    # the sharded run saved torch.distributed.checkpoint state and a whole model
    fsdp = tmp / "fsdp"
    ck = torch.load(fsdp / "checkpoint.pt", weights_only=False)
    assert ck["sharded"] == "checkpoint-dcp-3" and ck["model"] is None and ck["world_size"] == 2
    assert sorted(p.name for p in fsdp.glob("checkpoint-dcp-*")) == ["checkpoint-dcp-3"]
    assert HJLM.from_pretrained(fsdp / "model").num_params() > 0


def test_sharded_checkpoint_resumes_on_one_process(runs, tmp_path):
    import shutil

    tmp, cfg, _ = runs
    src = tmp / "fsdp"
    # the state saved by 2 processes loads on 1 bit for bit (the whole model was gathered
    # from the same shards into model/ at the end of the run)
    run = load_config(cfg("fsdp", 3, accum_steps=2))
    model = HJLM(run.model)
    opt = make_optimizer(model, run.train)
    with P.quiet_single_process():
        P.load_sharded(src / "checkpoint-dcp-3", model, opt)
    saved = HJLM.from_pretrained(src / "model").state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert all(len(s) == 3 for s in opt.state.values())  # step, exp_avg, exp_avg_sq
    # continue a 2-process run stopped at step 3 of 5 on 1 process: the losses of a
    # 1-process run of 5 steps
    out = tmp_path / "resumed"
    shutil.copytree(tmp / "fsdp_cut", out)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    resumed = train(load_config(cfg("fsdp", 5, accum_steps=2)), out, resume=True)
    full = _single(cfg("fsdp", 5, accum_steps=2), tmp_path / "full")
    _close({str(k): v for k, v in resumed.losses.items()},
           {str(k): v for k, v in full.losses.items() if k > 3})
    assert resumed.val_bpb == pytest.approx(full.val_bpb, rel=RTOL)


def test_sharded_checkpoint_resumes_on_more_processes(runs, tmp_path):
    """A run stopped at step 3 of 5 on 1 process continues on 2, and one stopped on 2
    continues on 4: steps 4 and 5 give the losses of an uninterrupted 1-process run (the
    optimizer state is resharded by torch.distributed.checkpoint)."""
    import shutil

    tmp, cfg, got = runs
    cut = cfg("fsdp", 5, accum_steps=2, batch_size=8)
    for name in ("cut1", "cut2"):
        ck = torch.load(tmp / name / "checkpoint.pt", weights_only=False)
        assert ck["step"] == 3 and ck["sharded"] == "checkpoint-dcp-3"
        assert ck["world_size"] == (1 if name == "cut1" else 2)
    for attempt in (1, 2):
        shutil.rmtree(tmp_path / "from2", ignore_errors=True)
        shutil.copytree(tmp / "cut2", tmp_path / "from2")
        try:
            on4 = _torchrun(tmp_path, {"from2": (cut, str(tmp_path / "from2"), None, True)},
                            nproc=4)
            break
        except AssertionError as e:
            # once, under a full suite's load, a rank aborted inside torch's C++
            # ("terminate called without an active exception"); it passed on every other
            # run: one retry from a fresh copy, reported. A failure of hjseq's code fails both
            if attempt == 2 or "SIGABRT" not in str(e):
                raise
            warnings.warn("4-process resume: a rank aborted (SIGABRT); retrying once")
    full = _single(cut, tmp_path / "full")
    want = {str(k): v for k, v in full.losses.items() if k > 3}
    for resumed in (got["from1"], on4["from2"]):
        _close(resumed, want)
    assert got["from1_val"] == pytest.approx(full.val_bpb, rel=RTOL)
    assert on4["from2_val"] == pytest.approx(full.val_bpb, rel=RTOL)


def test_parallel_config():
    from hjseq.models.config import ConfigError

    blocks = [{"kind": "gru"}]
    assert load_config({"model": {"d_model": 8, "blocks": blocks}}).train.parallel == "ddp"
    with pytest.raises(ConfigError, match=r"train.parallel: unknown 'zero3'; one of ddp, fsdp"):
        load_config({"model": {"d_model": 8, "blocks": blocks}, "train": {"parallel": "zero3"}})
