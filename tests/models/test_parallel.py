"""DDP and FSDP under torchrun (2 CPU processes, gloo) against one process with the same
global batch, and a sharded checkpoint resumed on another number of processes."""
import json
import os
import subprocess
import sys
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
for name, (cfg, path, stop_at) in runs.items():
    # Ctrl-C on rank 0 after step `stop_at`: every rank stops, and a checkpoint is written
    stop = lambda step, loss: os.kill(os.getpid(), signal.SIGINT) if step == stop_at else None
    res = train(load_config(cfg), path, on_step=stop)
    out[name] = {str(k): v for k, v in res.losses.items()}
    out[name + "_val"] = res.val_bpb
if dist.get_rank() == 0:
    open(sys.argv[2], "w").write(json.dumps(out))
dist.destroy_process_group()
'''


def _torchrun(tmp_path: Path, runs: dict, nproc: int = 2) -> dict:
    spec, result, script = tmp_path / "runs.json", tmp_path / "result.json", tmp_path / "w.py"
    spec.write_text(json.dumps(runs))
    script.write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
         "--standalone", str(script), str(spec), str(result)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=RTOL), k


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir):
    """One torchrun launch: FSDP (with gradient accumulation) and DDP, 2 processes each."""
    tmp = tmp_path_factory.mktemp("dist")

    def cfg(parallel, steps, **kw):
        t = dict(steps=steps, batch_size=4, seq_len=32, warmup_steps=2, eval_interval=2,
                 eval_batches=1, log_interval=1, checkpoint_interval=2, sample_chars=8,
                 val_fraction=0.3, data=str(corpus_dir), parallel=parallel, threads=1, **kw)
        return {"model": {"d_model": 16, "blocks": [
            {"kind": "gru"}, {"kind": "attention", "n_heads": 2},
            {"kind": "lse", "n_units": 16, "n_atoms": 3, "eps": 0.5}]}, "train": t}

    spec = {"fsdp": (cfg("fsdp", 3, accum_steps=2), str(tmp / "fsdp"), None),
            "ddp": (cfg("ddp", 3), str(tmp / "ddp"), None),
            "fsdp_cut": (cfg("fsdp", 5, accum_steps=2), str(tmp / "fsdp_cut"), 3)}
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


def test_parallel_config():
    from hjseq.models.config import ConfigError

    blocks = [{"kind": "gru"}]
    assert load_config({"model": {"d_model": 8, "blocks": blocks}}).train.parallel == "ddp"
    with pytest.raises(ConfigError, match=r"train.parallel: unknown 'zero3'; one of ddp, fsdp"):
        load_config({"model": {"d_model": 8, "blocks": blocks}, "train": {"parallel": "zero3"}})
