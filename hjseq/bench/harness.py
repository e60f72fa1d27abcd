"""Timing harness: median wall time of a callable, a result record, table and JSON output.

Every record names the backend that actually ran (never the one asked for)."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch


def time_fn(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1,
            min_time_s: float = 0.0) -> list[float]:
    """Run ``fn`` ``warmup`` times, then at least ``repeats`` times (and until ``min_time_s``
    has passed); return the per-call wall times in milliseconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Per-call wall times (ms), the candidates run round-robin (one warm-up each) so that
    load from other processes on a shared machine hits them all alike."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


@dataclass
class Record:
    op: str
    shape: str
    dtype: str
    backend: str  # the backend that actually ran
    median_ms: float
    runs: int
    ratio_vs: dict[str, float] = field(default_factory=dict)  # name -> speed-up over it
    extra: dict[str, Any] = field(default_factory=dict)


def measure(op: str, shape: str, dtype: str, backend: str, fn: Callable[[], Any],
            repeats: int = 5, warmup: int = 1, **extra: Any) -> Record:
    ts = time_fn(fn, repeats=repeats, warmup=warmup)
    return Record(op, shape, dtype, backend, statistics.median(ts), len(ts), extra=dict(extra))


def table(records: list[Record]) -> str:
    """A plain-text (Markdown) table of records."""
    extra_keys: list[str] = []
    for r in records:
        for k in list(r.ratio_vs) + list(r.extra):
            if k not in extra_keys:
                extra_keys.append(k)
    head = ["op", "shape", "dtype", "backend", "median ms", "runs", *extra_keys]
    rows = [head, ["---"] * len(head)]
    for r in records:
        vals = {**{k: f"{v:.1f}x" for k, v in r.ratio_vs.items()}, **r.extra}
        rows.append([r.op, r.shape, r.dtype, r.backend, f"{r.median_ms:.2f}", str(r.runs),
                     *[_fmt(vals.get(k, "")) for k in extra_keys]])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def dump_json(records: list[Record], path: str, **meta: Any) -> None:
    with open(path, "w") as f:
        json.dump({"meta": {**machine_info(), **meta}, "records": [asdict(r) for r in records]},
                  f, indent=2)


def machine_info() -> dict[str, Any]:
    import os
    import platform

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpus": os.cpu_count(), "machine": platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
