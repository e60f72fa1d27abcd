"""GPU benchmarks of the fused scan kernels (issue 5): hjseq's triton / cuda backends
against mamba-ssm / causal-conv1d (backend "mamba", when installed) and against a
device-to-device copy of the same number of bytes (the fraction of memory bandwidth the
kernel reaches). bf16 inputs, fp32 state and parameters.

    python benchmarks/bench_gpu.py [--quick] [--json PATH] [--ops selective_scan,...]

Without a CUDA device it prints that no GPU benchmark ran and exits 0. Every record names
the backend that actually ran; an unavailable backend is listed with its reason, not timed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import torch

from hjseq.bench.harness import Record, dump_json, measure, table
from hjseq.ops._registry import BackendUnavailable

FULL = {
    "selective_scan": [(8, 5120, 2048, 16), (1, 1536, 16384, 16)],
    "linear_scan": [(8, 1536, 65536)],
    "causal_conv1d": [(8, 5120, 2048, 4)],
}
QUICK = {
    "selective_scan": [(2, 1024, 2048, 16)],
    "linear_scan": [(2, 512, 16384)],
    "causal_conv1d": [(2, 1024, 2048, 4)],
}
BACKENDS = {"selective_scan": ["triton", "cuda", "mamba"], "linear_scan": ["triton", "cuda"],
            "causal_conv1d": ["triton", "mamba"]}


def _backend(op: str, name: str):
    """The implementation, or the reason it cannot run here."""
    try:
        return importlib.import_module(f"hjseq.ops.{op}.{name}").load(), None
    except (BackendUnavailable, ImportError) as e:
        return None, str(e)


def _inputs(op: str, shape: tuple[int, ...], grad: bool) -> tuple[dict, int]:
    """Inputs on CUDA and the bytes the op must move (inputs read + output written)."""
    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)

    def r(*s, dtype=bf, scale=1.0):
        return (torch.randn(*s, generator=g, device=dev) * scale).to(dtype).requires_grad_(grad)

    if op == "selective_scan":
        b, d, L, n = shape
        kw = dict(u=r(b, d, L), delta=r(b, d, L, scale=0.5),
                  A=(-torch.rand(d, n, generator=g, device=dev) - 0.1).requires_grad_(grad),
                  B=r(b, n, L), C=r(b, n, L), D=r(d, dtype=torch.float32),
                  z=r(b, d, L), delta_bias=r(d, dtype=torch.float32, scale=0.3),
                  delta_softplus=True)
        out_bytes = b * d * L * 2
    elif op == "linear_scan":
        b, d, L = shape
        kw = dict(a=torch.rand(b, d, L, generator=g, device=dev).to(bf).requires_grad_(grad),
                  b=r(b, d, L))
        out_bytes = b * d * L * 2
    else:
        b, d, L, w = shape
        kw = dict(x=r(b, d, L), weight=r(d, w, dtype=torch.float32),
                  bias=r(d, dtype=torch.float32), activation="silu")
        out_bytes = b * d * L * 2
    moved = out_bytes + sum(v.nbytes for v in kw.values() if torch.is_tensor(v))
    return kw, moved


def _copy_ms(nbytes: int, quick: bool) -> float:
    """Median time of a device-to-device copy that reads nbytes/2 and writes nbytes/2."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return measure("copy", "", "uint8", "torch", lambda: dst.copy_(src),
                   repeats=5 if quick else 20).median_ms


def run(ops: list[str], quick: bool) -> list[Record]:
    records: list[Record] = []
    shapes = QUICK if quick else FULL
    for op in ops:
        for shape in shapes[op]:
            for mode in ("fwd", "fwd+bwd"):
                kw, moved = _inputs(op, shape, grad=mode == "fwd+bwd")
                copy_ms = _copy_ms(moved, quick)
                row: list[Record] = []
                for name in BACKENDS[op]:
                    fn, why = _backend(op, name)
                    if fn is None:
                        print(f"[skip] {op} {name}: {why}", file=sys.stderr)
                        continue

                    def call(fn=fn):
                        y = fn(**kw)
                        if mode == "fwd+bwd":
                            y.backward(torch.ones_like(y))

                    try:
                        rec = measure(op, "x".join(map(str, shape)), "bf16", name, call,
                                      repeats=3 if quick else 10, mode=mode)
                    except (BackendUnavailable, RuntimeError) as e:
                        print(f"[skip] {op} {name}: {e}", file=sys.stderr)
                        continue
                    if mode == "fwd":  # bandwidth is meaningful for the one-pass forward
                        rec.extra["GB/s"] = moved / rec.median_ms / 1e6
                        rec.extra["copy_frac"] = copy_ms / rec.median_ms
                    row.append(rec)
                base = next((r for r in row if r.backend == "mamba"), None)
                for rec in row:
                    if base is not None and rec is not base:
                        rec.ratio_vs["vs_mamba"] = base.median_ms / rec.median_ms
                records += row
                kw = {}  # free the inputs before the next shape
                torch.cuda.empty_cache()
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    ap.add_argument("--json", metavar="PATH", help="also write the records as JSON")
    ap.add_argument("--ops", default=",".join(FULL), help="comma-separated ops to time")
    args = ap.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops if o not in FULL]
    if unknown:
        ap.error(f"unknown ops {unknown}; choose from {list(FULL)}")
    if not torch.cuda.is_available():
        print("no CUDA device: GPU benchmarks not run")
        if args.json:
            dump_json([], args.json, suite="gpu", skipped="no CUDA device")
        return 0
    records = run(ops, args.quick)
    print(f"device: {torch.cuda.get_device_name()}")
    print(table(records))
    if args.json:
        dump_json(records, args.json, suite="gpu", quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
