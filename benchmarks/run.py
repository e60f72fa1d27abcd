"""Run every ``benchmarks/bench_*.py`` and print one combined table.

    python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--out DIR]

Each script runs as its own subprocess with ``--json <out>/<name>.json`` (and ``--quick``);
a script that fails or times out is reported and the run goes on. The combined Markdown
table is printed and everything is written to ``<out>/summary.json`` (default out/bench).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing

from hjseq.bench.harness import Record, machine_info, table  # noqa: E402


def discover(only: list[str] | None) -> list[Path]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if any(o in s.stem for o in only)]
    return scripts


def run_one(script: Path, out: Path, quick: bool, timeout: float) -> dict:
    name = script.stem.removeprefix("bench_")
    jpath = out / f"{name}.json"
    jpath.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), "--json", str(jpath)] + (["--quick"] if quick else [])
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout, capture_output=True, text=True)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        log = f"{(e.stdout or b'')!s}\ntimed out after {timeout:.0f} s"
    seconds = time.perf_counter() - t0
    print(log.rstrip(), flush=True)
    result = {"name": name, "script": str(script.relative_to(ROOT)), "returncode": rc,
              "seconds": round(seconds, 1), "records": []}
    if rc == 0 and jpath.is_file():
        data = json.loads(jpath.read_text())
        result["records"] = data.get("records", [])
        result["meta"] = data.get("meta", {})
    else:
        result["error"] = ("timed out" if rc is None else
                           f"exit code {rc}" if rc != 0 else "no JSON written")
        result["log_tail"] = log[-4000:]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke run of each")
    p.add_argument("--only", help="comma-separated substrings of script names to run")
    p.add_argument("--out", default=str(ROOT / "out" / "bench"), help="output folder")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per script")
    args = p.parse_args(argv)
    only = [o.strip() for o in args.only.split(",")] if args.only else None
    scripts = discover(only)
    if not scripts:
        print(f"no benchmarks/bench_*.py matches --only {args.only!r}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_one(s, out, args.quick, args.timeout) for s in scripts]
    records = [Record(**r) for res in results for r in res["records"]]
    print("\n## Combined results\n")
    print(table(records) if records else "(no records)")
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"\nFAILED {r['script']}: {r['error']}\n{r['log_tail'][-1500:]}", file=sys.stderr)
    (out / "summary.json").write_text(json.dumps(
        {"meta": {**machine_info(), "quick": args.quick}, "results": results}, indent=2))
    print(f"\nwrote {out / 'summary.json'}; {len(results) - len(failed)}/{len(results)} "
          f"scripts succeeded")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
