"""Synthetic sequence tasks from the Mamba paper, generated on the fly, and ``hjseq bench
tasks``: train each block kind at a small size on each task and print an accuracy table.

* **Selective copying**: ``n_memorize`` data tokens sit at random positions among noise
  (blank) tokens; after them come ``n_memorize`` marker tokens, at which the model must
  output the data tokens in order. Needs content-dependent (selective) memory.
* **Induction heads**: a random token sequence holds a trigger token followed by a key;
  the trigger appears again as the last token and the model must output the key.

Accuracy is per answer token, measured on fresh batches after training.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hjseq.models.lm import HJLM

BLANK, MARKER = 0, 1  # selective copying: data tokens are 2 .. 2 + n_data − 1


def selective_copying(batch: int, seq_len: int, n_memorize: int = 4, n_data: int = 8,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs ``(batch, seq_len + n_memorize)``, targets (same shape, next-token aligned) and a
    bool mask of the positions scored (the ``n_memorize`` answers). Vocab: ``n_data + 2``."""
    if n_memorize > seq_len:
        raise ValueError(f"n_memorize={n_memorize} must be <= seq_len={seq_len}")
    data = torch.randint(2, 2 + n_data, (batch, n_memorize), generator=generator)
    pos = torch.rand(batch, seq_len, generator=generator).argsort(-1)[:, :n_memorize].sort(-1).values
    x = torch.full((batch, seq_len + n_memorize), BLANK, dtype=torch.long)
    x.scatter_(1, pos, data)
    x[:, seq_len:] = MARKER
    y = torch.full_like(x, -100)  # the answer to marker i is read at marker i's position
    y[:, seq_len:] = data
    return x, y, y != -100


def induction_heads(batch: int, seq_len: int, vocab: int = 16,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs ``(batch, seq_len)`` of random tokens ``1..vocab−1`` with the trigger token 0
    once at a random position p followed by a key at p + 1, and 0 again last; the target at
    the last position is the key. Returns inputs, targets (−100 where unscored) and the mask."""
    if seq_len < 4:
        raise ValueError(f"seq_len must be >= 4, got {seq_len}")
    x = torch.randint(1, vocab, (batch, seq_len), generator=generator)
    p = torch.randint(0, seq_len - 3, (batch,), generator=generator)
    rows = torch.arange(batch)
    x[rows, p] = 0
    key = x[rows, p + 1]
    x[:, -1] = 0
    y = torch.full_like(x, -100)
    y[:, -1] = key
    return x, y, y != -100


TASKS: dict[str, tuple[Callable[..., tuple[Tensor, Tensor, Tensor]], int]] = {
    # name: (generator, vocab size)
    "selective_copying": (selective_copying, 10),
    "induction_heads": (induction_heads, 16),
}
KINDS = ["mamba", "attention", "lstm", "gru", "rnn", "lse"]
"""The default line-up of ``hjseq bench tasks``; ``--kinds`` takes any registered kind
(``hjseq.models.known_kinds()``)."""


def task_model(kind: str, vocab: int, d_model: int, n_layers: int) -> HJLM:
    """``n_layers`` blocks of ``kind`` (each followed by nothing else), tied head."""
    block = {"kind": kind}
    if kind == "attention":
        block["n_heads"] = 4 if d_model % 4 == 0 else 1
    if kind == "mamba":
        block["d_state"] = 16
    return HJLM({"d_model": d_model, "vocab_size": vocab, "blocks": [block] * n_layers})


@dataclass
class TaskResult:
    task: str
    kind: str
    params: int
    steps: int
    accuracy: float
    final_loss: float
    seconds: float


def run_task(task: str, kind: str, steps: int, batch: int, seq_len: int, d_model: int,
             n_layers: int, lr: float = 3e-3, seed: int = 0, eval_batches: int = 4) -> TaskResult:
    """Train a fresh small model of ``kind`` on ``task`` for ``steps`` AdamW steps (warmup +
    cosine) and measure answer accuracy on ``eval_batches`` fresh batches."""
    make, vocab = TASKS[task]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = task_model(kind, vocab, d_model, n_layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x, y, _ = make(batch, seq_len, generator=gen)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for _ in range(eval_batches):
            x, y, mask = make(batch, seq_len, generator=gen)
            pred = model(x).argmax(-1)
            correct += int((pred[mask] == y[mask]).sum())
            total += int(mask.sum())
    return TaskResult(task, kind, model.num_params(), steps, correct / total, float(loss.detach()), seconds)


def table(results: list[TaskResult]) -> str:
    """Markdown table: one row per block kind, an accuracy column per task."""
    tasks = list(dict.fromkeys(r.task for r in results))
    kinds = list(dict.fromkeys(r.kind for r in results))
    by = {(r.kind, r.task): r for r in results}
    head = ["block", "params", *[f"{t} acc" for t in tasks], "train s"]
    rows = [head, ["---"] * len(head)]
    for k in kinds:
        rs = [by[(k, t)] for t in tasks if (k, t) in by]
        rows.append([k, f"{rs[0].params:,}",
                     *[f"{by[(k, t)].accuracy:.3f}" if (k, t) in by else "" for t in tasks],
                     f"{sum(r.seconds for r in rs):.1f}"])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Train each block kind on each synthetic task of the Mamba paper and "
                     "print an accuracy table.")
    p.add_argument("--kinds", default=",".join(KINDS), metavar="K1,K2",
                   help=f"comma-separated block kinds, from: {', '.join(KINDS)} (the default), "
                        "or any other registered kind")
    p.add_argument("--tasks", default=",".join(TASKS), metavar="T1,T2",
                   help=f"comma-separated tasks, from: {', '.join(TASKS)}")
    p.add_argument("--steps", type=int, default=300, help="training steps per (kind, task)")
    p.add_argument("--batch", type=int, default=32, help="sequences per training step")
    p.add_argument("--seq-len", type=int, default=48, help="sequence length of the tasks")
    p.add_argument("--d-model", type=int, default=64, help="model width")
    p.add_argument("--layers", type=int, default=2, help="blocks per model")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 steps, tiny sizes")
    p.add_argument("--json", metavar="PATH",
                   help="also write the results to this JSON file (default: none)")


def main(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    from hjseq.models.kinds import known_kinds

    for k in kinds:
        if k not in known_kinds():
            print(f"--kinds: unknown block kind {k!r}; one of {', '.join(known_kinds())}",
                  file=sys.stderr)
            return 2
    for t in tasks:
        if t not in TASKS:
            print(f"--tasks: unknown task {t!r}; one of {', '.join(TASKS)}", file=sys.stderr)
            return 2
    steps, batch, seq_len, d_model = args.steps, args.batch, args.seq_len, args.d_model
    if args.quick:
        steps, batch, seq_len, d_model = 20, 8, 16, 16
    results = []
    for t in tasks:
        for k in kinds:
            r = run_task(t, k, steps, batch, seq_len, d_model, args.layers, args.lr, args.seed)
            print(f"{t:18s} {k:10s} acc {r.accuracy:.3f}  loss {r.final_loss:.3f}  "
                  f"{r.seconds:.1f}s", file=sys.stderr, flush=True)
            results.append(r)
    print(f"synthetic tasks: {steps} steps, batch {batch}, seq_len {seq_len}, d_model {d_model}, "
          f"{args.layers} layers per model; chance: selective copying 1/8, induction 1/15")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)
    return 0
