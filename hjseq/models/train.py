"""``hjseq train CONFIG``: train an :class:`~hjseq.models.lm.HJLM` on bytes or, with
``[train] tokenizer = "bpe:N"``, on BPE tokens (:mod:`hjseq.models.tokenizer`).

    hjseq train examples/configs/small.toml                  # default corpus: Python stdlib
    hjseq train my.toml --data notes/ --out runs/notes --max-steps 500
    hjseq train --resume runs/small                           # continue exactly
    torchrun --nproc_per_node=2 -m hjseq train small.toml     # DDP (gloo on CPU, nccl on GPU)

Under torchrun, ``[train] parallel = "fsdp"`` shards the model instead of replicating it
(:mod:`hjseq.models.parallel`).

A resumed run keeps the configuration and the step budget it was started with (both are in
its checkpoint); ``--max-steps N`` sets a new budget explicitly.

AdamW with linear warmup then cosine decay, global-norm gradient clipping, optional bf16
autocast, gradient accumulation. Writes into ``--out``: ``metrics.jsonl`` (one line per
step, plus validation lines), ``loss.png``, ``checkpoint.pt`` (atomic; everything needed to
resume exactly), ``model/`` (``save_pretrained`` format, for ``hjseq generate``) and
``summary.json``. Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint
and exits with status 130. The data is checked before the first step (present, text, long
enough for ``seq_len`` and the evaluation windows). Tokens/s and the ETA leave out kernel
build and evaluation time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import torch
import torch.distributed as dist
from torch import nn

from hjseq.cli import INTERRUPTED, UserError
from hjseq.models import data as D
from hjseq.models import parallel as P
from hjseq.models.checkpoint import (CHECKPOINT_NAME, check_weights, load_checkpoint,
                                     rng_state, save_checkpoint, set_rng_state)
from hjseq.models.config import ModelConfig, RunConfig, TrainConfig, load_config
from hjseq.models.lm import HJLM, cross_entropy
from hjseq.models.tokenizer import ByteTokenizer, Tokenizer, check_fits, tokenize_corpus
from hjseq.ops._build import build_seconds


def resume_command(out: str | Path) -> str:
    """The one documented way to continue a run: ``hjseq train --resume OUT``."""
    return f"hjseq train --resume {out}"


# ---------------------------------------------------------------- progress bar
def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """A one-line progress bar on a stream (stderr by default): step, loss, tokens/s, ETA.

    On a terminal it redraws in place at most every ``min_interval`` s; on a pipe or file it
    writes a plain line every ``every`` steps (and at the end), so logs stay readable."""

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None,
                 every: int = 10, min_interval: float = 0.2, width: int = 24) -> None:
        self.total, self.start, self.every, self.width = total, start, every, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval
        self.t0 = time.perf_counter()
        self.excluded = 0.0  # seconds of build/evaluation left out of the ETA
        self._last_draw = 0.0

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (a kernel build, an evaluation) out of the training rate."""
        self.excluded += seconds

    def line(self, step: int, loss: float, tok_per_s: float) -> str:
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        training = max(elapsed - self.excluded, 1e-9)
        eta = training / done * (self.total - step) if done > 0 else float("inf")
        filled = int(self.width * step / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        return (f"[{bar}] {step}/{self.total} loss {loss:.4f} | {tok_per_s / 1e3:.1f}k tok/s | "
                f"{_fmt_time(elapsed)} elapsed, ETA {_fmt_time(eta)}")

    def update(self, step: int, loss: float, tok_per_s: float) -> None:
        now = time.perf_counter()
        last = step >= self.total
        if self.tty:
            if last or now - self._last_draw >= self.min_interval:
                self.stream.write("\r" + self.line(step, loss, tok_per_s) + "\x1b[K")
                self._last_draw = now
        elif last or step % self.every == 0:
            self.stream.write(self.line(step, loss, tok_per_s) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line without breaking the bar."""
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None) -> Dist:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``):
    gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world <= 1:
        return Dist(0, 1, torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def _all_mean(x: float, d: Dist) -> float:
    if not d.enabled:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t) / d.world_size


# ---------------------------------------------------------------- optimisation
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases, 1-D params, nor the SSM's
    ``A_log``, whose decay would pull the eigenvalues of A towards −1)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not name.endswith("A_log") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warmup, then cosine to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, val: torch.Tensor, cfg: TrainConfig, d: Dist,
             byte_lengths: torch.Tensor | None = None) -> float:
    """Validation bits per byte over ``eval_batches * batch_size`` fixed windows of tokens
    (sharded over ranks, summed back): total nats over the bytes of the predicted tokens
    (``byte_lengths``: bytes per token id; None = one byte per token)."""
    from hjseq.models.evaluate import score_windows

    was_training = model.training
    model.eval()
    offsets = D.val_offsets(val, cfg.eval_batches * cfg.batch_size, cfg.seq_len)
    s = score_windows(model, val, offsets[d.rank::d.world_size], cfg.seq_len, byte_lengths,
                      max(1, cfg.batch_size // d.world_size), d.device, lambda: _autocast(cfg, d))
    total = torch.tensor([s.nats, s.bytes], dtype=torch.float64, device=d.device)
    if d.enabled:
        dist.all_reduce(total)
    model.train(was_training)
    return D.bits_per_byte(float(total[0] / total[1]))


def _autocast(cfg: TrainConfig, d: Dist):
    if not cfg.bf16:
        return nullcontext()
    return torch.autocast(d.device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------- the run
@dataclass
class TrainResult:
    out_dir: Path
    step: int                      # optimizer steps completed
    losses: dict[int, float]       # step -> training loss (nats/byte), this invocation only
    val_bpb: float | None
    unigram_bpb: float | None
    interrupted: bool
    sample: str = ""


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checks it after each step. A second Ctrl-C falls
    through to Python's default (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread: no signal handling
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.set = True
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _write_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def plot_metrics(metrics_path: Path, out_png: Path, unigram_bpb: float | None = None) -> None:
    """Loss curve: training loss (bits/byte) per step, validation bpb, unigram baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    tr = [(r["step"], D.bits_per_byte(r["loss"])) for r in rows if "loss" in r]
    va = [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot(*zip(*tr), lw=1, alpha=0.8, label="train (bits/byte)")
    if va:
        ax.plot(*zip(*va), "o-", label="validation bpb")
    if unigram_bpb is not None:
        ax.axhline(unigram_bpb, color="gray", ls="--", label=f"unigram baseline {unigram_bpb:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)


def train(run: RunConfig, out_dir: str | Path, *, resume: bool | str | Path = False,
          device: str | None = None, stream: TextIO | None = None,
          on_step: Callable[[int, float], None] | None = None,
          allow_binary: bool = False) -> TrainResult:
    """Train ``run.model`` with ``run.train`` settings, writing into ``out_dir``.

    ``resume``: True continues from ``out_dir/checkpoint.pt``, a path from that checkpoint;
    its step must not exceed ``run.train.steps`` (the budget).
    ``on_step(step, loss)`` is called after every optimizer step (rank 0; used by tests).
    ``allow_binary``: train on data that is mostly not text (see :func:`data.check_text`).
    The data is checked before anything is built or written. Returns a
    :class:`TrainResult`; unless interrupted, ``step == run.train.steps``. Under
    ``torchrun`` every rank calls this.
    """
    cfg = run.train
    out = Path(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out if resume is True else Path(resume))
        where = out if resume is True else Path(resume)
        if ckpt["config"]["model"] != run.model.to_dict():
            raise UserError(f"--resume {where}: the checkpoint's [model] differs from the "
                            f"config given ({run.source}); resume with `{resume_command(out)}` "
                            "to use the checkpoint's own config")
        if ckpt["step"] > cfg.steps:
            raise UserError(f"--resume {where}: the checkpoint is at step {ckpt['step']}, past "
                            f"the step budget {cfg.steps}; give --max-steps N with N >= "
                            f"{ckpt['step']}")
        allow_binary = allow_binary or bool(ckpt.get("allow_binary", False))
    # the data is checked before a process group, a model or an output file exists
    corpus = D.load_corpus(cfg.data, cfg.val_fraction, allow_binary=allow_binary)
    D.check_lengths(corpus, cfg.seq_len, cfg.eval_batches * cfg.batch_size, cfg.val_fraction)
    tok, train_ids, val_ids = tokenize_corpus(cfg.tokenizer, corpus.train, corpus.val, cfg.seq_len,
                                              cfg.eval_batches * cfg.batch_size,
                                              ckpt.get("tokenizer") if ckpt else None)
    check_fits(tok, run.model.vocab_size, f"{run.source}: model.vocab_size")
    byte_lengths = None if isinstance(tok, ByteTokenizer) else tok.byte_lengths
    d = setup_distributed(device)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = ProgressBar(cfg.steps, stream=stream, every=cfg.log_interval)
    log.start = ckpt["step"] if ckpt else 0

    torch.manual_seed(cfg.seed)
    model = HJLM(run.model).to(d.device)
    if cfg.parallel == "fsdp" and d.enabled:
        P.shard(model)  # before the optimizer: it must hold the sharded parameters
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    start, tokens_seen = 0, 0
    if ckpt:
        if ckpt.get("sharded"):  # torch.distributed.checkpoint: resharded to this world size
            where = out if resume is True else Path(resume)
            with P.quiet_single_process():
                P.load_sharded((where if where.is_dir() else where.parent) / ckpt["sharded"],
                               model, optimizer)
        else:
            check_weights(model.state_dict(), ckpt["model"], out / CHECKPOINT_NAME)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # the learning rate of the resumed step under this run's budget (a new --max-steps
        # changes the schedule; with the same budget this is the saved value, bit for bit)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_factor(scheduler.last_epoch, cfg)
        set_rng_state(ckpt["rng"][d.rank] if d.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        start, tokens_seen = ckpt["step"], ckpt["tokens_seen"]
    ddp = P.wrap(model, cfg.parallel, d.enabled, d.device)

    metrics = out / "metrics.jsonl"
    if d.is_main:
        if ckpt:
            _truncate_metrics(metrics, start)
        elif metrics.exists():
            metrics.unlink()
        log.message(f"hjseq train: {run.source} -> {out}  ({d.world_size} process(es), "
                    f"{d.device}, bf16={cfg.bf16})")
        log.message(corpus.describe())
        if not isinstance(tok, ByteTokenizer):
            log.message(f"tokenizer {cfg.tokenizer}: {tok.vocab_size} tokens; train "
                        f"{train_ids.numel():,} tokens, validation {val_ids.numel():,} tokens")
        log.message(model.summary())
        if ckpt:
            log.message(f"resuming at step {start} of {cfg.steps}" +
                        (": the run had already reached its budget, nothing to train (give "
                         "--max-steps N to train further)" if start == cfg.steps else ""))
    unigram = D.unigram_bpb(corpus.train, corpus.val)

    def checkpoint(step: int) -> None:
        rngs = [rng_state()]
        if d.enabled:  # every rank's RNG, so each resumes its own stream
            rngs = [None] * d.world_size
            dist.all_gather_object(rngs, rng_state())
        sharded = None
        if cfg.parallel == "fsdp":  # model/optimizer state through torch.distributed.checkpoint
            with P.quiet_single_process():
                sharded = P.save_sharded(out, step, model, optimizer, d.is_main)
        if d.is_main:
            save_checkpoint(out / CHECKPOINT_NAME, {
                "model": None if sharded else model.state_dict(), "sharded": sharded,
                "optimizer": None if sharded else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rngs, "step": step,
                "tokens_seen": tokens_seen, "config": run.to_dict(), "world_size": d.world_size,
                "allow_binary": allow_binary, "tokenizer": tok.to_json(),
                # batches are a function of (seed, step): the next batch is step `step`'s
                "data_position": {"next_batch_step": step, "seed": cfg.seed},
            })
            if sharded:
                P.remove_old_sharded(out, sharded)
        if d.enabled:
            dist.barrier()

    tokens_per_step = cfg.batch_size * cfg.seq_len
    losses: dict[int, float] = {}
    val_bpb = None
    step = start
    interrupted = False
    ddp.train()
    with _StopFlag() as stop:
        t_last, step_last = time.perf_counter(), start
        built_last = build_seconds()
        log.t0 = t_last
        while step < cfg.steps:
            micro = D.train_batch(train_ids, step, cfg.batch_size, cfg.seq_len, cfg.seed,
                                  d.rank, d.world_size, cfg.accum_steps)
            loss_sum = 0.0
            for i, (x, y) in enumerate(micro):
                x, y = x.to(d.device), y.to(d.device)
                sync = i == len(micro) - 1 or not d.enabled
                with P.no_sync(ddp, sync), _autocast(cfg, d):
                    loss = cross_entropy(ddp(x), y) / len(micro)
                loss.backward()
                loss_sum += float(loss.detach())
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            loss_val = _all_mean(loss_sum, d)
            if not math.isfinite(loss_val):
                raise FloatingPointError(f"training loss is {loss_val} at step {step}; lower "
                                         "[train].lr or raise warmup_steps")
            losses[step] = loss_val
            now = time.perf_counter()
            built = build_seconds() - built_last  # a kernel compiled on first use
            log.exclude(built)
            tok_s = (step - step_last) * tokens_per_step / max(now - t_last - built, 1e-9)
            if d.is_main:
                _write_jsonl(metrics, {"step": step, "loss": loss_val,
                                       "lr": scheduler.get_last_lr()[0],
                                       "tokens": tokens_seen, "tok_per_s": round(tok_s, 1)})
                log.update(step, loss_val, tok_s)
                if on_step is not None:
                    on_step(step, loss_val)
            if step % cfg.eval_interval == 0 or step == cfg.steps:
                t_eval = time.perf_counter()
                val_bpb = evaluate(model, val_ids, cfg, d, byte_lengths)
                log.exclude(time.perf_counter() - t_eval)
                if d.is_main:
                    _write_jsonl(metrics, {"step": step, "val_bpb": val_bpb})
                    log.message(f"step {step}: val bpb {val_bpb:.4f} (unigram {unigram:.4f})")
            stop_now = stop.set
            if d.enabled:
                flag = torch.tensor([float(stop_now)], device=d.device)
                dist.all_reduce(flag)
                stop_now = bool(flag.item() > 0)
            if stop_now:
                interrupted = True
                break
            if step % cfg.checkpoint_interval == 0 and step < cfg.steps:
                checkpoint(step)
            t_last, step_last, built_last = time.perf_counter(), step, build_seconds()
    if not interrupted and step != cfg.steps:  # the loop ends only at the budget or a stop
        raise RuntimeError(f"training stopped at step {step} of {cfg.steps} without an interrupt")
    if val_bpb is None and not interrupted:  # resumed a run that had reached its budget
        val_bpb = evaluate(model, val_ids, cfg, d, byte_lengths)
    checkpoint(step)
    log.close()
    sample = ""
    # the finished model, whole (gathering FSDP shards is a collective: every rank calls it)
    final = (P.unsharded_copy(model, lambda: HJLM(run.model)) if not interrupted and
             P.is_sharded(model) else model)
    if d.is_main:
        if interrupted:
            log.message(f"interrupted at step {step} of {cfg.steps}: checkpoint in "
                        f"{out / CHECKPOINT_NAME}; continue with: {resume_command(out)}")
        else:
            final.save_pretrained(out / "model")
            tok.save(out / "model")
            sample = _sample(final, cfg, tok)
            summary = {"val_bpb": val_bpb, "unigram_bpb": unigram, "steps": step,
                       "tokens_seen": tokens_seen, "params": model.num_params(),
                       "corpus": corpus.name, "sample": sample}
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
        try:
            plot_metrics(metrics, out / "loss.png", unigram)
        except ImportError:
            log.message("matplotlib not installed: no loss.png")
    if d.enabled:
        dist.barrier()
    return TrainResult(out, step, losses, val_bpb, unigram, interrupted, sample)


def _sample(model: HJLM, cfg: TrainConfig, tok: Tokenizer, prompt: str = "def ") -> str:
    """About ``sample_chars`` bytes of text after ``prompt`` (as many tokens, fewer bytes
    counted per token with a subword tokenizer)."""
    from hjseq.models.generate import generate

    per_token = 1.0 if isinstance(tok, ByteTokenizer) else float(tok.byte_lengths.float().mean())
    n = max(1, round(cfg.sample_chars / max(per_token, 1.0)))
    ids = generate(model, tok.encode(prompt), n, temperature=0.8, top_k=None, top_p=0.95,
                   seed=cfg.seed)
    return tok.decode(tok.encode(prompt) + ids)


# ---------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Train a language model from a config. Continue an interrupted or "
                     "finished run with: hjseq train --resume RUN_DIR")
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="TOML/JSON config with [model] and [train] tables, e.g. "
                   "examples/configs/small.toml (not needed with --resume RUN_DIR)")
    p.add_argument("--data", metavar="FILE|DIR",
                   help="text to train on (default: the Python standard library's sources)")
    p.add_argument("--allow-binary", action="store_true",
                   help="accept data that is mostly not text (over 1%% NUL bytes or invalid "
                   "UTF-8), which is refused otherwise")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default: runs/<config name>; with --resume RUN_DIR: "
                   "RUN_DIR)")
    p.add_argument("--max-steps", type=_positive_int, metavar="N",
                   help="step budget, overriding [train].steps; with --resume, a new budget "
                   "for the run (default: the config's, or the resumed run's own)")
    p.add_argument("--seed", type=int, help="override [train].seed (default: the config's)")
    p.add_argument("--batch-size", type=_positive_int, metavar="N",
                   help="override [train].batch_size, the global batch (default: the config's)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue a run exactly, with its own config and step budget: RUN_DIR "
                   "is its --out directory (or its checkpoint.pt). Bare --resume after CONFIG "
                   "continues runs/<config name> (or --out) (default: start a new run)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=_non_negative_int, metavar="N",
                   help="override [train].threads: torch intra-op CPU threads (0 = torch's "
                   "default; 1 is often fastest on a busy machine) (default: the config's)")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _apply_overrides(run: RunConfig, args: argparse.Namespace) -> RunConfig:
    t = run.train.to_dict()
    for key, val in (("data", args.data), ("steps", args.max_steps), ("seed", args.seed),
                     ("batch_size", args.batch_size), ("threads", args.threads)):
        if val is not None:
            t[key] = val
    if args.bf16:
        t["bf16"] = True
    return RunConfig(run.model, TrainConfig.from_dict(t, "command line", "train"), run.source)


def _resume_run(args: argparse.Namespace) -> tuple[RunConfig, Path, Path]:
    """The run to continue: ``(run config, output dir, checkpoint path)``. The config and the
    step budget are the checkpoint's own; a CONFIG given beside it must describe the same
    model; ``--max-steps`` (a new budget), ``--threads``, ``--bf16`` and ``--device`` apply."""
    if args.resume is True:
        if args.config is None:
            raise UserError("--resume needs the run to continue: hjseq train --resume RUN_DIR "
                            "(the run's --out directory, e.g. runs/small)")
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        where = out
    else:
        where = Path(args.resume)
        out = Path(args.out) if args.out else (where if where.is_dir() else where.parent)
    ck = load_checkpoint(where)
    source = str(out / CHECKPOINT_NAME)
    run = RunConfig(ModelConfig.from_saved(ck["config"]["model"], source, "model"),
                    TrainConfig.from_dict(ck["config"]["train"], source, "train"), source)
    if args.config is not None:
        given = load_config(args.config)
        if given.model.to_dict() != run.model.to_dict():
            raise UserError(f"--resume {where}: the checkpoint's [model] differs from "
                            f"{args.config}'s; continue it with `{resume_command(out)}`, or "
                            f"train this config afresh with --out NEW_DIR")
    changed = [flag for flag, v in (("--data", args.data), ("--seed", args.seed),
                                    ("--batch-size", args.batch_size)) if v is not None]
    if changed:
        raise UserError(f"{', '.join(changed)} cannot change on --resume: the data a step sees "
                        "is fixed by the run's data, seed and batch size; start a new run "
                        "with --out NEW_DIR instead")
    return _apply_overrides(run, args), out, where


def main(args: argparse.Namespace) -> int:
    if args.config is None and not args.resume:
        raise UserError("give a CONFIG (e.g. examples/configs/small.toml), or --resume RUN_DIR "
                        "to continue a run")
    if args.config is not None and Path(args.config).is_dir():
        raise UserError(f"{args.config} is a directory, not a config; to continue the run in "
                        f"it use: {resume_command(args.config)}")
    if args.resume:
        run, out, resume = _resume_run(args)
    else:
        run = _apply_overrides(load_config(args.config), args)
        out, resume = Path(args.out or Path("runs") / Path(args.config).stem), False
    result = train(run, out, resume=resume, device=args.device, allow_binary=args.allow_binary)
    if int(os.environ.get("RANK", "0")) == 0 and not result.interrupted:
        print(f"validation: {result.val_bpb:.4f} bits/byte  "
              f"(unigram baseline of the same corpus: {result.unigram_bpb:.4f})")
        print(f"model saved to {out / 'model'}; metrics {out / 'metrics.jsonl'}, "
              f"plot {out / 'loss.png'}")
        print("sample:\n" + result.sample)
    if dist.is_initialized():
        dist.destroy_process_group()
    return INTERRUPTED if result.interrupted else 0
