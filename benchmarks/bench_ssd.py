"""Benchmark: hjseq's chunked CPU ``ssd_scan`` (Mamba-2's SSD) against the machine's matmul
rate and against mamba-ssm's pure-torch chunked SSD (``ssd_minimal_discrete``).

Shape: one Mamba-2 layer of d_model 768 (d_inner 1536 = 24 heads x headdim 64, d_state 128,
one group), batch 1, L = 2048, float32, chunk 64 and 128. ``--groups 24`` gives every head
its own B, C (the shape Mamba-3's CPU op runs the scan at), where C Bᵀ is per head.

In the same run it measures torch.mm's float32 rate at (L, n) @ (n, h·p) (the shape of
the layer's projections, an upper bound for the small per-chunk matmuls the op does) and
reports the fraction of that rate the op reaches, counting the flops the chunked
algorithm needs (causal products at half size): per chunk of Q and head,
forward Q²p (intra) + 4Qnp (state in, state out) and Q²n per group (C Bᵀ); backward
2Q²p + 8Qnp per head and 3Q²n per group.

    python benchmarks/bench_ssd.py [--quick] [--json PATH] [--threads N] [--groups G]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from typing import Callable

import torch

from hjseq.bench.harness import Record, dump_json, table
from hjseq.ops import resolve, ssd_scan

OP = "ssd_scan"


def flops(b: int, l: int, h: int, p: int, g: int, n: int, Q: int) -> tuple[float, float]:
    """(forward, backward) flops of the chunked algorithm (see the module docstring)."""
    nc = b * -(-l // Q)
    fwd = nc * (h * (Q * Q * p + 4 * Q * n * p) + g * Q * Q * n)
    bwd = nc * (h * (2 * Q * Q * p + 8 * Q * n * p) + g * 3 * Q * Q * n)
    return float(fwd), float(bwd)


def make_inputs(b, l, h, p, g, n, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    t = dict(x=torch.randn(b, l, h, p, generator=gen) * 0.1,
             log_decay=-0.5 * torch.rand(b, l, h, generator=gen),
             B=torch.randn(b, l, g, n, generator=gen), C=torch.randn(b, l, g, n, generator=gen))
    if requires_grad:
        t = {k: v.requires_grad_(True) for k, v in t.items()}
    return t


def _mamba_minimal():
    for m in ("selective_scan_cuda", "causal_conv1d_cuda"):
        sys.modules.setdefault(m, types.ModuleType(m))
    try:
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
    except ImportError as e:
        return None, str(e)
    return ssd_minimal_discrete, None


def _fwd_bwd(fn, inputs):
    for v in inputs.values():
        v.grad = None
    y = fn(**inputs)
    y.backward(torch.ones_like(y))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    ap.add_argument("--json", metavar="PATH", help="write the records as JSON")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--groups", type=int, default=1,
                    help="B/C groups (must divide the heads: 24, or 4 with --quick)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    b, l, h, p, n = (1, 256, 4, 64, 64) if args.quick else (1, 2048, 24, 64, 128)
    g = args.groups
    if h % g:
        ap.error(f"--groups {g} does not divide the {h} heads")
    shape = f"b={b} l={l} h={h} p={p} g={g} n={n}"
    inputs = make_inputs(b, l, h, p, g, n)
    grad_inputs = make_inputs(b, l, h, p, g, n, requires_grad=True)
    backend, _ = resolve(OP, "auto", "cpu", **inputs)  # the backend that actually runs
    ref_minimal, why = _mamba_minimal()

    # the bound: torch.mm float32 at the layer's projection shape (L, n) @ (n, h·p)
    # into a kept result buffer: the rate of the matmul, not of a fresh 12 MB allocation
    A_, B_, C_ = torch.randn(b * l, n), torch.randn(n, h * p), torch.empty(b * l, h * p)
    runs: dict[tuple, Callable[[], object]] = {
        ("torch.mm (bound)", f"({b * l}, {n}) @ ({n}, {h * p})", "torch", 0):
            lambda: torch.mm(A_, B_, out=C_)}
    for Q in (64, 128):
        fwd = lambda Q=Q, **kw: ssd_scan(**kw, chunk_size=Q, backend=backend)  # noqa: E731
        runs[(OP + " fwd", f"{shape} Q={Q}", backend, Q)] = lambda f=fwd: f(**inputs)
        runs[(OP + " fwd+bwd", f"{shape} Q={Q}", backend, Q)] = (
            lambda f=fwd: _fwd_bwd(f, grad_inputs))
        if ref_minimal is not None:
            def peer(x, log_decay, B, C, Q=Q):
                Bh, Ch = (t.expand(b, l, h, n) if g == 1 else t.repeat_interleave(h // g, 2)
                          for t in (B, C))
                return ref_minimal(x, log_decay, Bh, Ch, Q)[0]

            torch.testing.assert_close(fwd(**inputs), peer(**inputs), rtol=1e-3, atol=1e-3)
            name = "mamba ssd_minimal_discrete"
            runs[(OP + " fwd", f"{shape} Q={Q}", name, Q)] = lambda f=peer: f(**inputs)
            runs[(OP + " fwd+bwd", f"{shape} Q={Q}", name, Q)] = (
                lambda f=peer: _fwd_bwd(f, grad_inputs))
    # interleaved (one run of each in turn): a load change on a shared machine hits them all
    times: dict[tuple, list[float]] = {k: [] for k in runs}
    for f in runs.values():
        f()  # warm-up: extension built, allocator primed
    for _ in range(args.repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    rec = {k: Record(k[0], k[1], "float32", k[2], statistics.median(v), len(v))
           for k, v in times.items()}
    r_mm = next(iter(rec.values()))
    mm_rate = 2.0 * b * l * n * h * p / r_mm.median_ms / 1e6  # GFLOP/s
    r_mm.extra["GFLOP/s"] = mm_rate
    for (op, _, who, Q), r in rec.items():
        if Q == 0:
            continue
        fl_f, fl_b = flops(b, l, h, p, g, n, Q)
        r.extra["GFLOP/s"] = (fl_f if op.endswith("fwd") else fl_f + fl_b) / r.median_ms / 1e6
        r.extra["of mm rate"] = r.extra["GFLOP/s"] / mm_rate
        if who == backend and ref_minimal is not None:
            peer_r = rec[(op, r.shape, "mamba ssd_minimal_discrete", Q)]
            r.ratio_vs["speed-up vs peer"] = peer_r.median_ms / r.median_ms
    records = list(rec.values())

    print(table(records))
    print(f"\nbackend that ran: {backend}; threads: {torch.get_num_threads()}; "
          f"bound: torch.mm float32 at {mm_rate:.1f} GFLOP/s measured in this run"
          + ("" if ref_minimal is not None else f"; peer skipped (mamba-ssm: {why})"))
    if args.json:
        dump_json(records, args.json, bench="ssd", quick=args.quick, mm_gflops=mm_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
