"""GPU benchmarks of the fused kernels: hjseq's triton / cuda backends against mamba-ssm /
causal-conv1d (when installed) and against a device-to-device copy of the same number of
bytes (the fraction of memory bandwidth the kernel reaches). bf16 inputs, fp32 state and
parameters. Timed with ``triton.testing.do_bench`` (median; the harness timer without
triton).

    python benchmarks/bench_gpu.py [--quick] [--json PATH] [--ops selective_scan,...]
    python benchmarks/bench_gpu.py --registers [--arch 90] [--json PATH]

Without a CUDA device the timing mode prints that no GPU benchmark ran and exits 0. Every
record names the backend that actually ran; an unavailable backend is listed with its
reason, not timed. ``--registers`` needs no GPU: it compiles the Triton scan kernels with
the launch configurations of GPU calls at N = 16, 64, 128 (L = 2048) and prints the
registers and spill bytes ptxas reports for each (``--arch``: the sm version, default the
visible device's or 90).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Callable

import torch

from hjseq.bench.harness import Record, dump_json, measure, table
from hjseq.ops._registry import BackendUnavailable

# (shape) per op; the target rows first
FULL: dict[str, list[tuple[int, ...]]] = {
    "selective_scan": [(8, 5120, 2048, 16), (1, 1536, 16384, 16), (8, 1536, 2048, 64)],
    "linear_scan": [(8, 1536, 65536), (1, 1536, 16384)],
    "causal_conv1d": [(8, 5120, 2048, 4), (1, 1536, 16384, 4)],
    "selective_state_update": [(64, 5120, 16)],     # decode: (batch, D, N), one token
    "ssd": [(2, 2048, 32, 64, 128)],                # (b, l, h, p, n), chunk 64
    "mamba3_siso": [(2, 2048, 32, 64, 128)],        # (b, l, h, p, n), chunk 64
}
QUICK: dict[str, list[tuple[int, ...]]] = {
    "selective_scan": [(2, 1024, 2048, 16)],
    "linear_scan": [(2, 512, 16384)],
    "causal_conv1d": [(2, 1024, 2048, 4)],
    "selective_state_update": [(16, 1024, 16)],
    "ssd": [(1, 1024, 8, 64, 64)],
    "mamba3_siso": [(1, 1024, 8, 64, 64)],
}
BACKENDS = {"selective_scan": ["triton", "cuda", "mamba"], "linear_scan": ["triton", "cuda"],
            "causal_conv1d": ["triton", "mamba"], "selective_state_update": ["triton", "mamba"],
            "ssd": ["triton", "mamba"], "mamba3_siso": ["triton", "mamba"]}
FWD_ONLY = {"selective_state_update"}
AUTOTUNED = "triton-autotune"  # selective_scan's first row also runs with autotuning on
AUTOTUNE_ENV = "HJSEQ_TRITON_AUTOTUNE"
REGISTER_NS = (16, 64, 128)


# --- timing -------------------------------------------------------------------------------

def _bench_ms(fn: Callable[[], Any], quick: bool) -> tuple[float, str]:
    """Median milliseconds of fn and the timer used."""
    try:
        from triton.testing import do_bench
    except ImportError:
        rec = measure("", "", "", "", fn, repeats=3 if quick else 10)
        return rec.median_ms, "harness"
    return float(do_bench(fn, warmup=5 if quick else 25, rep=20 if quick else 100,
                          return_mode="median")), "do_bench"


def _op_backend(op: str, name: str) -> tuple[Callable | None, str | None]:
    """An op module's backend implementation, or the reason it cannot run here."""
    try:
        return importlib.import_module(f"hjseq.ops.{op}.{name}").load(), None
    except (BackendUnavailable, ImportError) as e:
        return None, str(e)


def _mamba_chunk_scan():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as e:
        return None, f"mamba-ssm's mamba_chunk_scan_combined is not importable: {e}"
    return mamba_chunk_scan_combined, None


def _case(op: str, shape: tuple[int, ...], grad: bool, dev: str = "cuda",
          autotune: bool = False) -> tuple[dict[str, tuple[Callable | None, str | None]], int]:
    """``{backend: (call, reason)}`` on fresh inputs (CUDA; the CPU for a smoke test of the
    calls under the Triton interpreter), and the bytes the op must move (inputs read +
    output written). Each call returns the output tensor."""
    bf = torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)

    def r(*s, dtype=bf, scale=1.0, rg=grad):
        return (torch.randn(*s, generator=g, device=dev) * scale).to(dtype).requires_grad_(rg)

    calls: dict[str, tuple[Callable | None, str | None]] = {}
    if op in ("selective_scan", "linear_scan", "causal_conv1d"):
        if op == "selective_scan":
            b, d, L, n = shape
            kw = dict(u=r(b, d, L), delta=r(b, d, L, scale=0.5),
                      A=(-torch.rand(d, n, generator=g, device=dev) - 0.1).requires_grad_(grad),
                      B=r(b, n, L), C=r(b, n, L), D=r(d, dtype=torch.float32),
                      z=r(b, d, L), delta_bias=r(d, dtype=torch.float32, scale=0.3),
                      delta_softplus=True)
        elif op == "linear_scan":
            b, d, L = shape
            kw = dict(a=torch.rand(b, d, L, generator=g, device=dev).to(bf).requires_grad_(grad),
                      b=r(b, d, L))
        else:
            b, d, L, w = shape
            kw = dict(x=r(b, d, L), weight=r(d, w, dtype=torch.float32),
                      bias=r(d, dtype=torch.float32), activation="silu")
        moved = b * d * L * 2 + sum(v.nbytes for v in kw.values() if torch.is_tensor(v))
        for name in BACKENDS[op]:
            fn, why = _op_backend(op, name)
            calls[name] = ((lambda fn=fn: fn(**kw)) if fn else None, why)
        if autotune:  # the same Triton call, with HJSEQ_TRITON_AUTOTUNE=1 (set by run())
            calls[AUTOTUNED] = calls["triton"]
        return calls, moved
    if op == "selective_state_update":
        b, d, n = shape
        state = torch.randn(b, d, n, generator=g, device=dev)
        kw = dict(x=r(b, d), dt=r(b, d), A=-torch.rand(d, n, generator=g, device=dev),
                  B=r(b, n), C=r(b, n), D=r(d, dtype=torch.float32), z=r(b, d),
                  dt_bias=r(d, dtype=torch.float32), dt_softplus=True)
        moved = 2 * state.nbytes + b * d * 2 + sum(v.nbytes for v in kw.values()
                                                   if torch.is_tensor(v))
        from hjseq.ops.selective_state_update import selective_state_update
        for name in BACKENDS[op]:
            fn, why = _op_backend(op, name)

            def call(name=name):  # in place where the backend offers it, as decoding does
                try:
                    return selective_state_update(state, **kw, backend=name, inplace=True)[0]
                except TypeError:
                    return selective_state_update(state, **kw, backend=name)[0]
            calls[name] = (call if fn else None, why)
        return calls, moved
    b, L, h, p, n = shape
    if op == "ssd":
        from hjseq.ops.ssd import ssd
        x, z = r(b, L, h, p), r(b, L, h, p)
        dt = r(b, L, h, dtype=torch.float32, scale=0.5)
        A = (-torch.rand(h, generator=g, device=dev) - 0.5).requires_grad_(grad)
        B, C = r(b, L, 1, n), r(b, L, 1, n)
        D, dt_bias = r(h, dtype=torch.float32), r(h, dtype=torch.float32, scale=0.3)
        moved = 2 * x.nbytes + sum(t.nbytes for t in (z, dt, B, C))
        try:
            importlib.import_module("hjseq.ops.ssd.triton").load()
            calls["triton"] = (lambda: ssd(x, dt, A, B, C, 64, D=D, z=z, dt_bias=dt_bias,
                                           dt_softplus=True, backend="triton"), None)
        except (BackendUnavailable, ImportError) as e:
            calls["triton"] = (None, str(e))
        mcs, why = _mamba_chunk_scan()
        calls["mamba"] = ((lambda: mcs(x, dt, A, B, C, 64, D=D, z=z, dt_bias=dt_bias,
                                       dt_softplus=True)) if mcs else None, why)
        return calls, moved
    if op == "mamba3_siso":
        from hjseq.ops.mamba3_siso import mamba3_siso
        a = n // 4
        args = dict(Q=r(b, L, 1, n), K=r(b, L, 1, n), V=r(b, L, h, p),
                    ADT=-torch.rand(b, h, L, generator=g, device=dev).requires_grad_(grad),
                    DT=(torch.rand(b, h, L, generator=g, device=dev) * 0.1).requires_grad_(grad),
                    Trap=r(b, h, L, dtype=torch.float32), Q_bias=r(h, n, dtype=torch.float32),
                    K_bias=r(h, n, dtype=torch.float32), Angles=r(b, L, h, a, dtype=torch.float32),
                    D=r(h, dtype=torch.float32), Z=r(b, L, h, p))
        moved = args["V"].nbytes + sum(t.nbytes for t in args.values())
        for name in BACKENDS[op]:
            fn, why = _op_backend(op, name)
            calls[name] = ((lambda name=name: mamba3_siso(**args, backend=name)) if fn else None,
                           why)
        return calls, moved
    raise ValueError(f"unknown op {op!r}; choose from {list(FULL)}")


def _copy_ms(nbytes: int, quick: bool) -> float:
    """Time of a device-to-device copy that reads nbytes/2 and writes nbytes/2."""
    src = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return _bench_ms(lambda: dst.copy_(src), quick)[0]


def run(ops: list[str], quick: bool, shapes: dict | None = None,
        on_record: Callable[[Record], None] | None = None) -> list[Record]:
    """Time every (op, shape, mode, backend); ``on_record`` sees each record as it is made
    (so a caller can save partial results)."""
    records: list[Record] = []
    shapes = shapes or (QUICK if quick else FULL)
    for op in ops:
        for shape in shapes[op]:
            for mode in ("fwd",) if op in FWD_ONLY else ("fwd", "fwd+bwd"):
                try:
                    calls, moved = _case(op, shape, grad=mode == "fwd+bwd",
                                         autotune=op == "selective_scan" and shape == shapes[op][0])
                except (BackendUnavailable, ImportError, RuntimeError, TypeError) as e:
                    print(f"[skip] {op} {shape}: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                copy_ms = _copy_ms(moved, quick)
                row: list[Record] = []
                for name, (call, why) in calls.items():
                    if call is None:
                        print(f"[skip] {op} {name}: {why}", file=sys.stderr)
                        continue

                    def step(call=call, tuned=name == AUTOTUNED):
                        if tuned:
                            os.environ[AUTOTUNE_ENV] = "1"
                        try:
                            y = call()
                            if mode == "fwd+bwd":
                                y.backward(torch.ones_like(y))
                        finally:
                            if tuned:
                                os.environ.pop(AUTOTUNE_ENV, None)

                    try:
                        ms, timer = _bench_ms(step, quick)
                    except Exception as e:  # a failing backend is reported, not timed
                        print(f"[fail] {op} {name} {mode}: {type(e).__name__}: {e}",
                              file=sys.stderr)
                        continue
                    rec = Record(op, "x".join(map(str, shape)), "bf16", name, ms, 0,
                                 extra=dict(mode=mode, timer=timer))
                    if mode == "fwd":  # bandwidth is meaningful for the one-pass forward
                        rec.extra["GB/s"] = moved / ms / 1e6
                        rec.extra["copy_frac"] = copy_ms / ms
                    row.append(rec)
                base = next((r for r in row if r.backend == "mamba"), None)
                for rec in row:
                    if base is not None and rec is not base:
                        rec.ratio_vs["vs_mamba"] = base.median_ms / rec.median_ms
                    if on_record is not None:
                        on_record(rec)
                records += row
                calls = {}  # free the inputs before the next shape
                torch.cuda.empty_cache()
    return records


# --- registers and spills (no GPU needed) --------------------------------------------------

def _ptxas(arch: int) -> str:
    from triton.backends.nvidia import compiler as nvc
    try:
        return nvc.get_ptxas(arch).path
    except TypeError:  # older triton: get_ptxas() without the arch
        return nvc.get_ptxas().path
    except AttributeError:
        return nvc._path_to_binary("ptxas")[0]


def _ptx_usage(ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes of a PTX kernel, as ptxas -v reports them."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    res = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                         capture_output=True, text=True, timeout=300)
    os.unlink(f.name)
    out = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", out)
    stores = re.search(r"(\d+) bytes spill stores", out)
    loads = re.search(r"(\d+) bytes spill loads", out)
    if regs is None:
        raise RuntimeError(f"ptxas reported no register count: {out[-500:]}")
    return dict(registers=int(regs.group(1)), spill_stores=int(stores.group(1)) if stores else 0,
                spill_loads=int(loads.group(1)) if loads else 0)


def _register_worker(arch: int) -> list[dict]:
    """In a process without TRITON_INTERPRET: compile each scan kernel as GPU calls launch
    it (wrappers called on CPU tensors, launches intercepted), report its ptxas usage."""
    from hjseq.ops._triton_offline import install

    rows: list[dict] = []
    label = [""]

    def record(kernel: str, opts: dict, compiled, error: Exception | None) -> None:
        row = dict(kernel=kernel, config=label[0], **opts)
        if error is None:
            row.update(_ptx_usage(compiled.asm["ptx"], arch))
        else:  # report and keep going
            row["error"] = f"{type(error).__name__}: {error}"[-500:]
        rows.append(row)

    install(("selective_scan", "linear_scan", "causal_conv1d"), arch, record)
    ss = importlib.import_module("hjseq.ops.selective_scan.triton")

    def leaf(*shape, dtype=torch.bfloat16):
        return torch.zeros(*shape, dtype=dtype).requires_grad_()

    f32, L, D = torch.float32, 2048, 64
    for n in REGISTER_NS:
        label[0] = f"N={n}, bf16, zoh, D, z, delta_bias"
        y, h = ss.selective_scan_triton(leaf(1, D, L), leaf(1, D, L), leaf(D, n, dtype=f32),
                                        leaf(1, n, L), leaf(1, n, L), leaf(D, dtype=f32),
                                        leaf(1, D, L), leaf(D, dtype=f32), True, None, True,
                                        "zoh")
        (y.float().sum() + h.sum()).backward()
    label[0] = "bf16"
    ls = importlib.import_module("hjseq.ops.linear_scan.triton")
    h = ls.linear_scan_triton(leaf(1, D, L), leaf(1, D, L))
    h.float().sum().backward()
    cc = importlib.import_module("hjseq.ops.causal_conv1d.triton")
    label[0] = "bf16, W=4, silu"
    y = cc.causal_conv1d_triton(leaf(1, D, L), leaf(D, 4, dtype=f32), leaf(D, dtype=f32), "silu")
    y.float().sum().backward()
    return rows


def register_report(arch: int | None = None) -> list[dict]:
    """Registers and spills of the Triton kernels at N = 16, 64, 128 (compiled, not run)."""
    if arch is None:
        arch = (torch.cuda.get_device_capability()[0] * 10 + torch.cuda.get_device_capability()[1]
                if torch.cuda.is_available() else 90)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--registers-worker",
                          str(arch)], capture_output=True, text=True, env=env, timeout=1200)
    if res.returncode != 0:
        raise RuntimeError(f"register report failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def register_table(rows: list[dict]) -> str:
    head = "| kernel | config | warps | registers | spill stores B | spill loads B |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['config']} | {r.get('num_warps', '')} | "
                         f"error: {r['error'][:80]} | | |")
        else:
            lines.append(f"| {r['kernel']} | {r['config']} | {r.get('num_warps', '')} | "
                         f"{r['registers']} | {r['spill_stores']} | {r['spill_loads']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    ap.add_argument("--json", metavar="PATH", help="also write the records as JSON")
    ap.add_argument("--ops", default=",".join(FULL), help="comma-separated ops to time")
    ap.add_argument("--registers", action="store_true",
                    help="print registers/spills of the Triton kernels (no GPU needed)")
    ap.add_argument("--arch", type=int, default=None, help="sm version for --registers")
    ap.add_argument("--registers-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.registers_worker is not None:
        print(json.dumps(_register_worker(args.registers_worker)))
        return 0
    if args.registers:
        rows = register_report(args.arch)
        print(register_table(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 1 if any("error" in r for r in rows) else 0
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
