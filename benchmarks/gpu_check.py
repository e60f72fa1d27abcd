"""The first GPU run, prepared: one command that checks and times hjseq's GPU kernels on a
machine with a CUDA device in under 8 minutes, writing everything to a folder as it goes
(so a timeout keeps what finished).

    python benchmarks/gpu_check.py [--out out/gpu_check] [--budget-s 460] [--only a,b]
    python benchmarks/gpu_check.py --dry-run      # list the steps; needs no GPU

Steps, in order (subprocesses under the step's time limit, its log streamed to
``OUT/<nn>_<step>.log``; ``OUT/summary.json`` is rewritten after every step):

1. ``env``: device, driver, torch / triton / mamba-ssm versions, nvcc, compute-sanitizer.
2. ``correctness``: fail-fast (pytest -x) Triton and CUDA against the reference, float64
   (1e-10) and float32, large N, fp16, many packed sequences, the reverse-scan checks,
   plus ssd and mamba3_siso Triton against their references where those ops import.
3. ``registers``: registers and spill bytes of the Triton kernels at N = 16, 64, 128.
4. ``cuda``: the CUDA extension build and its GPU tests.
5. ``sanitizer``: compute-sanitizer memcheck and racecheck on a small forward+backward of
   every backend, where the tool exists.
6. ``bench``: the benchmark rows against copy bandwidth and, where installed, mamba-ssm
   (``triton.testing.do_bench``): selective_scan (8, 5120, 2048, 16), (1, 1536, 16384, 16),
   N = 64, decode, small-batch linear_scan and conv, ssd and mamba3_siso.

Exit status: 0 when every step that ran passed, 1 otherwise; 2 without a CUDA device
(unless ``--dry-run``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
THIS = str(Path(__file__).resolve())


@dataclass
class Step:
    name: str
    what: str
    budget_s: int
    commands: list[list[str]] = field(default_factory=list)
    needs: str | None = None  # an executable that must exist, else the step is skipped


def sanitizer_path() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and Path(home, "bin", "compute-sanitizer").is_file():
            return str(Path(home, "bin", "compute-sanitizer"))
    return None


def steps(out: Path) -> list[Step]:
    pytest = [PY, "-m", "pytest", "-x", "-q", "-rs", "-p", "no:cacheprovider"]
    san = sanitizer_path() or "compute-sanitizer"
    return [
        Step("env", "device, versions, tools", 15, [[PY, THIS, "--case", "env"]]),
        Step("correctness", "Triton and CUDA vs reference, fp64 and fp32 (fail-fast)", 120, [
            [*pytest, "tests/gpu/test_triton_hazards.py", "tests/gpu/test_triton_gpu_run.py",
             "tests/gpu/test_cuda_gpu.py", "-k", "not cuda or triton or mamba",
             f"--junitxml={out / 'correctness.xml'}"],
            [PY, THIS, "--case", "new-ops"]]),
        Step("registers", "registers and spills of the Triton kernels, N = 16/64/128", 45,
             [[PY, "benchmarks/bench_gpu.py", "--registers", "--json",
               str(out / "registers.json")]]),
        Step("cuda", "CUDA extension build and tests", 90, [
            [*pytest, "tests/gpu/test_cuda_build.py", "tests/gpu/test_cuda_gpu.py", "-k",
             "not triton and not mamba",
             f"--junitxml={out / 'cuda.xml'}"]]),
        Step("sanitizer", "compute-sanitizer memcheck + racecheck, small fwd+bwd", 60, [
            [san, "--tool", "memcheck", "--error-exitcode", "1", PY, THIS, "--case", "sanitize"],
            [san, "--tool", "racecheck", "--error-exitcode", "1", PY, THIS, "--case",
             "sanitize"]], needs="compute-sanitizer"),
        Step("bench", "benchmarks vs copy bandwidth and mamba-ssm (do_bench)", 120,
             [[PY, THIS, "--case", "bench", "--out", str(out)]]),
    ]


# --- cases run as subprocesses --------------------------------------------------------------

def case_env() -> int:
    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__,
                torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}",
                    memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
    for mod in ("triton", "mamba_ssm", "causal_conv1d"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # report what is missing, keep going
            info[mod] = f"not importable: {type(e).__name__}: {e}"
    info["nvcc"] = shutil.which("nvcc")
    info["compute_sanitizer"] = sanitizer_path()
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem",
             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(info, indent=1))
    return 0


def case_new_ops() -> int:
    """ssd and mamba3_siso Triton backends against their references (fp64 and fp32), where
    those ops import; a missing op or backend is reported as a skip with its reason."""
    import importlib

    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    failed = 0
    for op, build in (("ssd", _ssd_inputs), ("mamba3_siso", _mamba3_inputs)):
        try:
            mod = importlib.import_module(f"hjseq.ops.{op}")
            importlib.import_module(f"hjseq.ops.{op}.triton").load()
        except Exception as e:
            print(f"[skip] {op}: {type(e).__name__}: {e}")
            continue
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
            fn, kw = build(mod, dtype, dev)
            ref = fn(**kw, backend="ref")
            got = fn(**kw, backend="triton")
            ref = ref[0] if isinstance(ref, tuple) else ref
            got = got[0] if isinstance(got, tuple) else got
            err = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
            ok = err < tol
            failed += not ok
            print(f"[{'ok' if ok else 'FAIL'}] {op} triton vs ref {dtype}: rel err {err:.2e} "
                  f"(tol {tol:g})")
    return 1 if failed else 0


def _ssd_inputs(mod, dtype, dev):
    import torch
    g = torch.Generator().manual_seed(0)
    b, L, h, p, n = 2, 300, 4, 16, 32

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dev, dtype)

    kw = dict(x=r(b, L, h, p), dt=r(b, L, h, scale=0.5),
              A=(-torch.rand(h, generator=g, dtype=torch.float64) - 0.5).to(dev, dtype),
              B=r(b, L, 2, n), C=r(b, L, 2, n), chunk_size=64, D=r(h), z=r(b, L, h, p),
              dt_bias=r(h, scale=0.3), dt_softplus=True)
    return mod.ssd, kw


def _mamba3_inputs(mod, dtype, dev):
    import torch
    g = torch.Generator().manual_seed(0)
    b, L, h, p, n = 2, 200, 4, 16, 32

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dev, dtype)

    kw = dict(Q=r(b, L, 2, n), K=r(b, L, 2, n), V=r(b, L, h, p),
              ADT=-torch.rand(b, h, L, generator=g, dtype=torch.float64).to(dev, dtype),
              DT=(torch.rand(b, h, L, generator=g, dtype=torch.float64) * 0.1).to(dev, dtype),
              Trap=r(b, h, L), Q_bias=r(h, n), K_bias=r(h, n), Angles=r(b, L, h, n // 4),
              D=r(h), Z=r(b, L, h, p))
    return mod.mamba3_siso, kw


def case_sanitize() -> int:
    """A small forward+backward of every GPU backend (for compute-sanitizer)."""
    import importlib

    import torch
    from hjseq.ops._registry import BackendUnavailable
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*s, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*s, generator=g, device="cuda") * scale).to(dtype).requires_grad_()

    b, d, L, n = 2, 64, 1100, 16
    runs = {
        ("selective_scan", "triton"): lambda fn: fn(r(b, d, L), r(b, d, L, scale=0.5),
                                                    -torch.rand(d, n, device="cuda") - 0.1,
                                                    r(b, n, L), r(b, n, L), z=r(b, d, L)),
        ("linear_scan", "triton"): lambda fn: fn(torch.rand(b, d, L, device="cuda"), r(b, d, L)),
        ("causal_conv1d", "triton"): lambda fn: fn(r(b, d, L), r(d, 4, dtype=torch.float32),
                                                   activation="silu"),
    }
    runs[("selective_scan", "cuda")] = runs[("selective_scan", "triton")]
    runs[("linear_scan", "cuda")] = runs[("linear_scan", "triton")]
    for (op, name), call in runs.items():
        try:
            fn = importlib.import_module(f"hjseq.ops.{op}.{name}").load()
        except BackendUnavailable as e:
            print(f"[skip] {op} {name}: {e}")
            continue
        y = call(fn)
        y.float().sum().backward()
        torch.cuda.synchronize()
        print(f"[ran] {op} {name}")
    return 0


def case_bench(out: Path) -> int:
    """The benchmark rows; each record is appended to OUT/bench.jsonl as it is measured."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_gpu
    from dataclasses import asdict

    from hjseq.bench.harness import table
    path = out / "bench.jsonl"

    def save(rec):
        with open(path, "a") as f:
            f.write(json.dumps(asdict(rec)) + "\n")
        print(f"{rec.op} {rec.shape} {rec.extra.get('mode')} {rec.backend}: "
              f"{rec.median_ms:.3f} ms {rec.ratio_vs or ''}", flush=True)

    records = bench_gpu.run(list(bench_gpu.FULL), quick=False, on_record=save)
    print(table(records))
    return 0


# --- driver -------------------------------------------------------------------------------

def _run_step(step: Step, idx: int, out: Path, deadline: float) -> dict:
    log = out / f"{idx:02d}_{step.name}.log"
    res: dict = dict(step=step.name, what=step.what, log=log.name, commands=[])
    if step.needs and (sanitizer_path() if step.needs == "compute-sanitizer"
                       else shutil.which(step.needs)) is None:
        res.update(status="skipped", reason=f"{step.needs} not found")
        return res
    t0 = time.time()
    step_deadline = min(deadline, t0 + step.budget_s)
    status = "passed"
    with open(log, "w", buffering=1) as f:
        for cmd in step.commands:
            limit = step_deadline - time.time()
            if limit < 5:
                status = "out of time"
                f.write(f"# not run (out of time): {' '.join(cmd)}\n")
                break
            f.write(f"$ {' '.join(cmd)}   # limit {limit:.0f}s\n")
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.pop("TRITON_INTERPRET", None)
            try:
                p = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                   timeout=limit)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            except FileNotFoundError as e:
                rc = f"not found: {e}"
            res["commands"].append(dict(cmd=" ".join(cmd), rc=rc))
            if rc != 0:
                status = "failed"
    res.update(status=status, seconds=round(time.time() - t0, 1))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/gpu_check", help="folder for logs and results")
    ap.add_argument("--budget-s", type=float, default=460, help="total time limit")
    ap.add_argument("--only", default="", help="comma-separated step names to run")
    ap.add_argument("--dry-run", action="store_true", help="list the steps and exit")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.case:
        if args.case == "bench":
            return case_bench(out)
        return dict(env=case_env, sanitize=case_sanitize, **{"new-ops": case_new_ops})[args.case]()
    plan = steps(out.resolve())
    names = [s.name for s in plan]
    only = [n for n in args.only.split(",") if n]
    bad = [n for n in only if n not in names]
    if bad:
        ap.error(f"unknown steps {bad}; choose from {names}")
    plan = [s for s in plan if not only or s.name in only]
    if args.dry_run:
        total = 0
        for i, s in enumerate(plan, 1):
            total += s.budget_s
            print(f"{i}. {s.name} ({s.budget_s}s max): {s.what}")
            for c in s.commands:
                print(f"     $ {' '.join(c)}")
            if s.needs:
                print(f"     (skipped where {s.needs} is not found)")
        print(f"total: at most {min(total, args.budget_s):.0f}s; logs and summary.json in {out}/")
        return 0
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (use --dry-run to list the steps)")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget_s
    summary: dict = dict(started=time.strftime("%Y-%m-%d %H:%M:%S"), budget_s=args.budget_s,
                         steps=[])
    for i, s in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {s.name}: {s.what}", flush=True)
        res = _run_step(s, i, out, deadline)
        summary["steps"].append(res)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"    -> {res['status']} ({res.get('seconds', 0)}s), log {out / res['log']}",
              flush=True)
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0 if all(r["status"] in ("passed", "skipped") for r in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
