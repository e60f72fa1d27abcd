"""Benchmark: hjseq's fused nonlinear recurrences (recurrent_scan: HJLSTM / HJGRU / HJRNN
cells) against torch.nn.LSTM / GRU / RNN, forward and forward+backward.

    python benchmarks/bench_recurrent.py [--quick] [--json PATH] [--cells lstm,gru]

At Δ = 1 the op is exactly torch's layer ("auto" may dispatch to torch's fused kernels:
the row names the backend that ran); at Δ ≠ 1 it runs hjseq's C++ time loop. Targets
(B=16, L=512, I=H=256, fp32): Δ = 1 within 1.2x of torch, Δ ≠ 1 within 2x. Column
``x torch`` is time / torch's time (lower is better); state updates/s counts B·L·H. The
candidates are timed round-robin (median of ``--repeats``) so machine load hits all alike.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

from hjseq.bench.harness import Record, dump_json, interleaved, table
from hjseq.ops._registry import available, resolve
from hjseq.ops.recurrent_scan import recurrent_scan

OP = "recurrent_scan"
MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    p.add_argument("--json", metavar="PATH", help="write the records as JSON")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cells", default="lstm,gru", help="comma-separated: lstm,gru,rnn_tanh")
    p.add_argument("--dt", type=float, default=0.5, help="the Δ != 1 step to time")
    p.add_argument("--with-ref", action="store_true", help="also time the Python reference")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, L, I, H = (4, 64, 64, 64) if args.quick else (16, 512, 256, 256)
    reps = 3 if args.quick else args.repeats
    print(f"recurrent_scan backends: { {k: v or 'ok' for k, v in available(OP, 'cpu').items()} }")
    recs: list[Record] = []
    for cell in [c.strip() for c in args.cells.split(",") if c.strip()]:
        torch.manual_seed(0)
        m = MODULES[cell](I, H, batch_first=True)
        x = torch.randn(B, L, I)
        params = (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
        shape = f"{cell} B={B} L={L} I={I} H={H}"
        n = B * L * H
        runs: list[tuple[str, float]] = [("auto", 1.0), ("cpu", 1.0), ("cpu", args.dt)]
        if args.with_ref:
            runs.append(("ref", args.dt))
        for mode in ("fwd", "fwd+bwd"):
            xg = x.clone().requires_grad_(mode == "fwd+bwd")
            grad = mode == "fwd+bwd"

            def torch_call() -> None:
                with torch.set_grad_enabled(grad):
                    y = m(xg)[0]
                    if grad:
                        y.backward(torch.ones_like(y))

            fns: dict[str, Callable[[], None]] = {"torch": torch_call}
            meta: dict[str, tuple[str, str, float]] = {"torch": (
                f"torch.nn.{m.__class__.__name__}", "", 1.0)}
            for backend, dt in runs:
                kw = dict(cell=cell, x=xg, weight_ih=params[0], weight_hh=params[1],
                          bias_ih=params[2], bias_hh=params[3], h0=None, dt=dt)
                try:
                    ran, _ = resolve(OP, backend, "cpu", **kw, c0=None, noise=None)
                except Exception as e:  # e.g. the cpu backend could not build
                    print(f"skip {cell} {mode} backend={backend} dt={dt}: {e}")
                    continue

                def call(kw=kw, ran=ran) -> None:
                    with torch.set_grad_enabled(grad):
                        y = recurrent_scan(**kw, backend=ran)[0]
                        if grad:
                            y.backward(torch.ones_like(y))

                key = f"{backend}@{dt}"
                fns[key] = call
                meta[key] = (ran, backend, dt)
            times = interleaved(fns, reps)
            base_ms = statistics.median(times["torch"])
            for key, ts in times.items():
                ran, asked, dt = meta[key]
                r = Record(f"{cell} {mode}", shape, "float32", ran, statistics.median(ts), len(ts))
                r.extra["asked"] = asked or "-"
                r.extra["dt"] = dt
                if key != "torch":
                    r.extra["x torch"] = r.median_ms / base_ms
                r.extra["Mupdates/s"] = n / (r.median_ms * 1e-3) / 1e6
                recs.append(r)
    print(table(recs))
    if args.json:
        dump_json(recs, args.json, bench="recurrent", shape=[B, L, I, H],
                  threads=torch.get_num_threads())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
