"""Benchmark: hjseq's CPU selective scan against the pure-PyTorch scan CPU users have today.

The peer is written the way mamba-ssm's ``selective_scan_ref`` is (einsum for exp(ΔA) and
ΔBu over the whole (B, D, L, N) tensor, then a Python loop over L). In the same run it
measures ``torch.exp`` over B·D·L·N elements -- the selective scan needs one exp per
state update, so that is the bound a non-fused implementation cannot beat.

    python benchmarks/bench_selective_scan.py [--quick] [--json PATH]

Rows: forward (target >= 50x the peer), forward+backward (target <= 3x hjseq's forward),
backward alone vs the peer's autograd backward at L=512 (the peer is timed ONCE there: it
takes tens of seconds), and the backward's peak memory (RSS growth sampled every 0.5 ms
in a fresh subprocess with glibc's mmap threshold fixed at 64 KiB and hjseq's CPU block
cache off, so every large buffer is freshly mapped; against the bytes of the forward's
inputs and outputs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

from hjseq.bench.harness import Record, dump_json, measure, table
from hjseq.ops import resolve, selective_scan

OP = "selective_scan"


def mamba_style_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The peer: a selective scan as mamba-ssm's ``selective_scan_ref`` computes it
    (u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L))."""
    dtype_in = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    x = A.new_zeros((batch, dim, dstate))
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out.to(dtype_in)


def make_inputs(batch: int, dim: int, L: int, N: int, requires_grad: bool = False):
    g = torch.Generator().manual_seed(0)
    t = dict(u=torch.randn(batch, dim, L, generator=g),
             delta=0.5 * torch.randn(batch, dim, L, generator=g) - 1.0,
             A=-torch.exp(torch.rand(dim, N, generator=g)),
             B=torch.randn(batch, N, L, generator=g), C=torch.randn(batch, N, L, generator=g),
             D=torch.randn(dim, generator=g), z=torch.randn(batch, dim, L, generator=g),
             delta_bias=0.1 * torch.randn(dim, generator=g))
    if requires_grad:
        t = {k: v.requires_grad_(True) for k, v in t.items()}
    return t


def _fwd_bwd(fn, inputs):
    for v in inputs.values():
        v.grad = None  # as zero_grad(set_to_none=True): time the op, not grad accumulation
    out = fn(**inputs, delta_softplus=True)
    out.backward(torch.ones_like(out))


def _timed_backward(fn, inputs, repeats: int) -> list[float]:
    """Backward-only wall times (ms); the forward of each run is outside the clock."""
    times = []
    for _ in range(repeats):
        for v in inputs.values():
            v.grad = None
        out = fn(**inputs, delta_softplus=True)
        g = torch.ones_like(out)
        t0 = time.perf_counter()
        out.backward(g)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _io_bytes(inputs, out) -> int:
    return sum(v.numel() * v.element_size() for v in inputs.values()) + out.numel() * out.element_size()


def peak_memory_child(batch: int, dim: int, L: int, N: int, backend: str) -> None:
    """Run in a fresh process: print JSON with the forward's I/O bytes and the RSS growth
    peak during backward (sampled from /proc/self/statm every 0.5 ms)."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    inputs = make_inputs(batch, dim, L, N, requires_grad=True)
    fn = lambda **kw: selective_scan(**kw, backend=backend)  # noqa: E731
    _fwd_bwd(fn, inputs)  # warm-up: extension loaded, allocator primed
    for v in inputs.values():
        v.grad = None
    out = fn(**inputs, delta_softplus=True)
    io = _io_bytes(inputs, out)
    peak, stop = [0], [False]

    def sampler():
        while not stop[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    base = rss()
    th = threading.Thread(target=sampler)
    th.start()
    out.backward(torch.ones_like(out))
    stop[0] = True
    th.join()
    peak[0] = max(peak[0], rss())
    print(json.dumps({"io_bytes": io, "bwd_peak_bytes": peak[0] - base}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    p.add_argument("--json", metavar="PATH", help="write the records as JSON")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (also the kernel's OpenMP team); default: torch's")
    p.add_argument("--_peak_child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._peak_child:
        b, d, l, n = map(int, args._peak_child[:4])
        peak_memory_child(b, d, l, n, args._peak_child[4])
        return 0

    batch, dim, L, N = (1, 256, 256, 16) if args.quick else (1, 1536, 2048, 16)
    L_bwd_ref = 64 if args.quick else 512
    # quick shapes take well under a millisecond: more runs keep the median meaningful
    reps = max(args.repeats, 15) if args.quick else args.repeats
    inputs = make_inputs(batch, dim, L, N)
    backend, _ = resolve(OP, "auto", "cpu", **inputs)  # the backend that will actually run
    hj = lambda **kw: selective_scan(**kw, backend=backend)  # noqa: E731
    shape = f"B={batch} D={dim} L={L} N={N}"
    updates = batch * dim * L * N
    records: list[Record] = []

    # forward: exp bound, peer, hjseq
    x = torch.randn(updates)
    r_exp = measure("torch.exp (bound)", f"{updates / 1e6:.1f}M elements", "float32", "torch",
                    lambda: torch.exp(x), repeats=reps)
    del x
    r_ref = measure(OP + " fwd", shape, "float32", "mamba-style ref",
                    lambda: mamba_style_ref(**inputs, delta_softplus=True), repeats=reps)
    r_hj = measure(OP + " fwd", shape, "float32", backend,
                   lambda: hj(**inputs, delta_softplus=True), repeats=reps)
    torch.testing.assert_close(hj(**inputs, delta_softplus=True),
                               mamba_style_ref(**inputs, delta_softplus=True),
                               rtol=1e-3, atol=1e-3)
    for r in (r_ref, r_hj):
        r.extra["Gupd/s"] = updates / r.median_ms / 1e6
    r_hj.ratio_vs["speed-up vs ref"] = r_ref.median_ms / r_hj.median_ms
    r_hj.extra["time / torch.exp time"] = r_hj.median_ms / r_exp.median_ms
    records += [r_exp, r_ref, r_hj]

    # forward + backward, hjseq
    g_in = make_inputs(batch, dim, L, N, requires_grad=True)
    r_fb = measure(OP + " fwd+bwd", shape, "float32", backend, lambda: _fwd_bwd(hj, g_in),
                   repeats=reps)
    r_fb.extra["fwd+bwd / fwd"] = r_fb.median_ms / r_hj.median_ms
    r_fb.extra["Gupd/s"] = updates / r_fb.median_ms / 1e6
    records.append(r_fb)

    # backward alone at L_bwd_ref: hjseq (median) vs the peer's autograd (timed once)
    shape_b = f"B={batch} D={dim} L={L_bwd_ref} N={N}"
    gb = make_inputs(batch, dim, L_bwd_ref, N, requires_grad=True)
    t_hj = sorted(_timed_backward(hj, gb, reps))
    t_ref = _timed_backward(mamba_style_ref, gb, 1)
    r_bh = Record(OP + " bwd", shape_b, "float32", backend, t_hj[len(t_hj) // 2], len(t_hj))
    r_br = Record(OP + " bwd", shape_b, "float32", "mamba-style ref (autograd)", t_ref[0], 1,
                  extra={"note": "timed once"})
    r_bh.ratio_vs["speed-up vs ref"] = r_br.median_ms / r_bh.median_ms
    records += [r_br, r_bh]

    # backward peak memory, fresh process
    # glibc would otherwise serve the backward's buffers from memory the warm-up freed (no
    # RSS growth): a fixed mmap threshold maps every large allocation fresh and unmaps it
    # on free, so RSS growth is the live size of the backward's large allocations. hjseq's
    # block cache would do the same as glibc: it is off there (HJSEQ_CPU_CACHE_MB=0).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "HJSEQ_CPU_CACHE_MB": "0"}
    child = subprocess.run(
        [sys.executable, __file__, "--_peak_child", str(batch), str(dim), str(L), str(N), backend,
         *(["--threads", str(args.threads)] if args.threads else [])],
        capture_output=True, text=True, check=True, env=env)
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    r_fb.extra["bwd peak MB"] = mem["bwd_peak_bytes"] / 2**20
    r_fb.extra["fwd I/O MB"] = mem["io_bytes"] / 2**20
    r_fb.extra["peak / I/O"] = mem["bwd_peak_bytes"] / mem["io_bytes"]

    print(table(records))
    print(f"\nbackend that ran: {backend}; threads: {torch.get_num_threads()}; "
          f"memory: RSS growth during backward, sampled every 0.5 ms in a fresh process "
          f"(MALLOC_MMAP_THRESHOLD_=65536, HJSEQ_CPU_CACHE_MB=0)")
    if args.json:
        dump_json(records, args.json, bench="selective_scan", quick=args.quick,
                  peak_memory_method="RSS growth during backward sampled every 0.5 ms "
                                     "(/proc/self/statm) in a fresh subprocess, "
                                     "MALLOC_MMAP_THRESHOLD_=65536, HJSEQ_CPU_CACHE_MB=0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
