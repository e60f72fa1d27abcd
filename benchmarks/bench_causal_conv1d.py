"""Benchmark: hjseq's causal_conv1d backends (Mamba's short depthwise conv, silu) against
the reference (``F.conv1d`` with groups=D on the history-padded input).

    python benchmarks/bench_causal_conv1d.py [--quick] [--json PATH]

Columns: speed-up over the reference, element outputs per second.
"""
from __future__ import annotations

import argparse

import torch

from hjseq.bench.harness import Record, dump_json, measure, table
from hjseq.ops import available, resolve
from hjseq.ops.causal_conv1d import causal_conv1d

OP = "causal_conv1d"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    p.add_argument("--json", metavar="PATH", help="write the records as JSON")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    B, D, L, W = (2, 256, 512, 4) if args.quick else (8, 1536, 2048, 4)
    reps = 3 if args.quick else args.repeats
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, L, generator=g)
    w = torch.randn(D, W, generator=g)
    bias = torch.randn(D, generator=g)
    shape, n = f"B={B} D={D} L={L} W={W} silu", B * D * L
    auto, _ = resolve(OP, "auto", "cpu", x=x, weight=w, bias=bias, activation="silu")
    print(f"causal_conv1d: backend='auto' resolves to {auto!r}; available: "
          f"{ {k: v or 'ok' for k, v in available(OP, 'cpu').items()} }")
    names = ["ref"] + [k for k, why in available(OP, "cpu").items() if why is None and k != "ref"]
    recs: list[Record] = []
    base: dict[str, float] = {}
    for name in names:
        fwd = measure(f"{OP} fwd", shape, "float32", name,
                      lambda: causal_conv1d(x, w, bias, "silu", backend=name), repeats=reps)
        xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, bias))

        def fwd_bwd() -> None:
            y = causal_conv1d(xg, wg, bg, "silu", backend=name)
            y.backward(torch.ones_like(y))

        fb = measure(f"{OP} fwd+bwd", shape, "float32", name, fwd_bwd, repeats=reps)
        for r in (fwd, fb):
            if name == "ref":
                base[r.op] = r.median_ms
            else:
                r.ratio_vs["vs ref"] = base[r.op] / r.median_ms
            r.extra["Gelem/s"] = n / (r.median_ms * 1e-3) / 1e9
            recs.append(r)
    print(table(recs))
    if args.json:
        dump_json(recs, args.json, bench="causal_conv1d", auto_backend=auto)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
