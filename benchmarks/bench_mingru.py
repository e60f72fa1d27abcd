"""Benchmark: a user-written spec (minGRU, ``examples/mingru.py``) on the engine's generic
fused path against the same computation written by hand and against the reference loop.

    python benchmarks/bench_mingru.py [--quick] [--json PATH] [--threads N]

The block declares only ``affine()`` (F = h̃ − h) and a ``DriveStep``; ``backend="auto"``
runs it through ``hjseq.ops.linear_scan`` with no minGRU kernel. "by hand" is what a user
would write without hjseq's engine: the input projection, the gates, then ``linear_scan``
on (a, b) = (1 − z, z ⊙ h̃) directly. Targets (B=16, L=2048, H=64, fp32, 2 threads): the
block within 1.25x of by-hand, fwd and fwd+bwd, and >= 5x faster than the loop. All three
are timed round-robin in one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from examples.mingru import MinGRU  # noqa: E402
from hjseq.bench.harness import Record, dump_json, interleaved, table  # noqa: E402
from hjseq.ops import linear_scan  # noqa: E402
from hjseq.ops._registry import resolve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    p.add_argument("--json", metavar="PATH", help="write the records as JSON")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    B, L, H = (4, 256, 32) if args.quick else (16, 2048, 64)
    reps = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    block = MinGRU(H, H)
    x = torch.randn(B, L, H)
    probe = torch.empty(B, H, L)
    scan_backend = resolve("linear_scan", "auto", "cpu", a=probe, b=probe, initial_state=None,
                           return_final_state=False, cu_seqlens=None)[0]
    print(f"MinGRU fused path: {block.fused_path()} (linear_scan backend {scan_backend!r}); "
          f"threads={torch.get_num_threads()}")

    def by_hand(xg: torch.Tensor) -> torch.Tensor:
        z, cand = block.proj(xg).chunk(2, dim=-1)
        z = torch.sigmoid(z)
        a = (1 - z).transpose(1, 2).contiguous()
        b = (z * cand).transpose(1, 2).contiguous()
        return linear_scan(a, b, backend=scan_backend).transpose(1, 2)

    def hjseq_block(backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(xg: torch.Tensor) -> torch.Tensor:
            block.backend = backend
            return block(xg)
        return run

    check = (hjseq_block("auto")(x) - by_hand(x)).abs().max().item()
    print(f"max |block(auto) - by hand| = {check:.2e}")
    candidates = {"by hand": (by_hand, f"linear_scan[{scan_backend}]"),
                  "block auto": (hjseq_block("auto"), f"engine linear_scan[{scan_backend}]"),
                  "block loop": (hjseq_block("loop"), "engine loop (Python)")}
    recs: list[Record] = []
    for mode in ("fwd", "fwd+bwd"):
        grad = mode == "fwd+bwd"
        fns = {}
        for name, (fn, _) in candidates.items():
            def call(fn=fn) -> None:
                xg = x.clone().requires_grad_(grad)
                with torch.set_grad_enabled(grad):
                    y = fn(xg)
                    if grad:
                        y.backward(torch.ones_like(y))
            fns[name] = call
        times = interleaved(fns, reps)
        base = statistics.median(times["by hand"])
        auto = statistics.median(times["block auto"])
        for name, ts in times.items():
            r = Record(f"minGRU {mode}", f"B={B} L={L} H={H}", "float32", candidates[name][1],
                       statistics.median(ts), len(ts))
            r.extra["candidate"] = name
            r.extra["x by hand"] = r.median_ms / base
            r.extra["x block auto"] = r.median_ms / auto
            recs.append(r)
    print(table(recs))
    if args.json:
        dump_json(recs, args.json, bench="mingru", shape=[B, L, H],
                  threads=torch.get_num_threads())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
