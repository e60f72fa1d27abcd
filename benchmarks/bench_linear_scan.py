"""Benchmark: hjseq's linear_scan (h_t = a_t ⊙ h_{t−1} + b_t) backends against the Python
reference loop and against a plain memory copy of the same tensors.

    python benchmarks/bench_linear_scan.py [--quick] [--json PATH]

Target (fp32, (B, D, L) = (8, 1536, 4096)): forward within 2x of ``a.clone(); b.clone()``
timed in the same run. Columns: speed-up over the reference (``ref``), time relative to
the copy (``x copy``), and element updates per second.
"""
from __future__ import annotations

import argparse

import torch

from hjseq.bench.harness import Record, dump_json, measure, table
from hjseq.ops import available, resolve
from hjseq.ops.linear_scan import linear_scan

OP = "linear_scan"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    p.add_argument("--json", metavar="PATH", help="write the records as JSON")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    B, D, L = (2, 256, 1024) if args.quick else (8, 1536, 4096)
    reps = 3 if args.quick else args.repeats
    g = torch.Generator().manual_seed(0)
    a = 0.5 + 0.5 * torch.rand(B, D, L, generator=g)
    b = torch.randn(B, D, L, generator=g)
    shape, n = f"B={B} D={D} L={L}", B * D * L
    auto, _ = resolve(OP, "auto", "cpu", a=a, b=b)
    print(f"linear_scan: backend='auto' resolves to {auto!r}; available: "
          f"{ {k: v or 'ok' for k, v in available(OP, 'cpu').items()} }")

    def copy() -> None:
        a.clone()
        b.clone()

    recs: list[Record] = []
    cp = measure("memcpy a,b (clone)", shape, "float32", "torch", copy, repeats=reps)
    recs.append(cp)
    ref = measure(f"{OP} fwd", shape, "float32", "ref",
                  lambda: linear_scan(a, b, backend="ref"), repeats=1 if not args.quick else reps)
    recs.append(ref)
    names = [k for k, why in available(OP, "cpu").items() if why is None and k != "ref"]
    for name in names:
        r = measure(f"{OP} fwd", shape, "float32", name,
                    lambda: linear_scan(a, b, backend=name), repeats=reps)
        recs.append(r)
        ag, bg = a.clone().requires_grad_(), b.clone().requires_grad_()

        def fwd_bwd() -> None:
            h = linear_scan(ag, bg, backend=name)
            h.backward(torch.ones_like(h))

        recs.append(measure(f"{OP} fwd+bwd", shape, "float32", name, fwd_bwd, repeats=reps))
    for r in recs:
        if r.backend != "torch":
            if r.op.endswith("fwd") and r is not ref:
                r.ratio_vs["vs ref"] = ref.median_ms / r.median_ms
            r.extra["x copy"] = r.median_ms / cp.median_ms
            r.extra["Gupdates/s"] = n / (r.median_ms * 1e-3) / 1e9
    print(table(recs))
    if args.json:
        dump_json(recs, args.json, bench="linear_scan", auto_backend=auto)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
