"""Benchmark: generation speed on the CPU — hjseq's fused decode step against Hugging Face
transformers' ``MambaForCausalLM`` on the same random weights (and llama.cpp on the same
weights converted to GGUF, where it builds), side by side in one run.

    python benchmarks/bench_generate.py [--threads 2] [--quick] [--shapes small,130m]
        [--batches 1,8,32] [--no-llama-cpp] [--llama-build-timeout 600] [--json PATH]

Shapes: "small" = 4 × Mamba, d=128 (examples/configs/small.toml's shape); "130m" = 24 ×
Mamba, d=768 (mamba-130m's shape); byte vocabulary (256), d_state 16, expand 2, d_conv 4.
Rows: prefill tok/s (batch 1, 512 tokens), decode tok/s at each batch size (greedy), the
fraction of the weight-bandwidth bound (bound = batch × read bandwidth / bytes of weights
read per step; the read bandwidth is measured in this run by summing a 512 MB tensor), and
the GEMV rate of each weight format on a DRAM-sized matrix. hjseq's greedy tokens are
checked against HF's (batch 1, fp32).

llama.cpp: built from the ``llama-cpp-python`` source package of the package index
(``pip download``, then cmake, the ``llama-bench`` target only) under a time cap, cached in
``~/.cache/hjseq/llama.cpp``; the HF model is converted with its ``convert_hf_to_gguf.py``
(f32, bf16, q8_0) and timed with ``llama-bench`` at batch 1. If any of that fails, the
reason is printed and llama.cpp is left out; nothing is estimated in its place.
"""
from __future__ import annotations

import os

# How threads wait at a barrier, decided before the OpenMP runtime starts (i.e. before
# importing torch) unless OMP_WAIT_POLICY is set: on a machine busier than its cores, waiters
# that spin steal the time slices the working threads need (measured: 1 vs 14 tok/s at the
# 130m shape under a load of 10), so they sleep (PASSIVE); on a quiet machine, waking a
# sleeping thread costs ~20 us per parallel region, about 50 regions per token (measured at
# the 130m shape, batch 1: 67 tok/s PASSIVE against 78 ACTIVE), so they spin (ACTIVE).
# "Busy" is measured, not read off the load average, which lags by minutes.


def _cpu_busy_now(seconds: float = 0.5) -> float:
    """Fraction of all cores busy during the next ``seconds`` (/proc/stat; this process is
    idle meanwhile), or the 1-minute load average per core where /proc/stat is missing."""
    import time

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
        return 1.0 - (i1 - i0) / max(t1 - t0, 1)
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] / (os.cpu_count() or 1)


if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE" if _cpu_busy_now() > 0.25 else "ACTIVE"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

from hjseq.models import HJLM  # noqa: E402
from hjseq.models.decode import FusedDecoder, _ext  # noqa: E402
from hjseq.models.quantize import pack_linear  # noqa: E402

SHAPES = {"small": (128, 4), "130m": (768, 24)}
FORMATS = ("float32", "bfloat16", "int8")
LLAMA_FORMATS = {"float32": "f32", "bfloat16": "bf16", "int8": "q8_0"}
CACHE = Path.home() / ".cache" / "hjseq" / "llama.cpp"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def read_bandwidth(repeats: int) -> float:
    """GB/s of ``x.sum()`` over a 512 MB float32 tensor (the weights' path: DRAM to core)."""
    x = torch.ones(128 * 2**20)
    return x.numel() * 4 / median_time(lambda: x.sum(), repeats) / 1e9


def gemv_rates(repeats: int) -> dict[str, float]:
    """GB/s of one GEMV (batch 1) over a 151 MB-in-fp32 matrix (24 × mamba-130m's in_proj
    rows: larger than the caches): torch's F.linear, and hjseq's kernel per weight format."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3072 * 16, 768, generator=g)
    x = torch.randn(1, 768, generator=g)
    out = {"torch F.linear fp32": W.numel() * 4 / median_time(
        lambda: torch.nn.functional.linear(x, W), repeats) / 1e9}
    ext = _ext()
    for fmt in FORMATS:
        t = pack_linear("p", W, None, fmt, torch.float32)
        nbytes = t["p.weight"].numel() * t["p.weight"].element_size()
        out[f"hjseq {fmt}"] = nbytes / median_time(lambda: ext.linear(t, "p", x), repeats) / 1e9
    return out


def build_models(d: int, n_layers: int):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=256, hidden_size=d, num_hidden_layers=n_layers, state_size=16,
                      expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                      tie_word_embeddings=True, pad_vocab_size_multiple=8)
    hf = MambaForCausalLM(cfg).eval()
    hj = HJLM.from_hf_mamba(hf.state_dict(), config=hf.config.to_dict()).eval()
    return hf, hj


@torch.no_grad()
def hf_decode_rate(hf, B: int, n: int, prompt_len: int = 16) -> tuple[float, list[int]]:
    """Decode tok/s of ``hf.generate`` (greedy, cache on): (t(n) − t(1)) over n − 1 steps."""
    ids = torch.randint(0, 256, (B, prompt_len), generator=torch.Generator().manual_seed(1))
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0)

    def run(k: int):
        return hf.generate(ids, max_new_tokens=k, min_new_tokens=k, **kw)
    run(2)
    t1 = median_time(lambda: run(1), 1, 0)
    t = time.perf_counter()
    out = run(n)
    tn = time.perf_counter() - t
    return B * (n - 1) / max(tn - t1, 1e-9), out[0, prompt_len:].tolist()


@torch.no_grad()
def hj_decode_rate(hj: HJLM, dec: FusedDecoder | None, B: int, n: int,
                   prompt_len: int = 16) -> tuple[float, list[int]]:
    """Decode tok/s of hjseq (fused step if ``dec`` else ``HJLM.step``), greedy."""
    ids = torch.randint(0, 256, (B, prompt_len), generator=torch.Generator().manual_seed(1))
    if dec is not None:
        logits, state = dec.prefill(hj, ids.tolist())
        step = lambda t: dec.step(t, state)  # noqa: E731
    else:
        logits, st = hj(ids, return_state=True)
        logits, box = logits[:, -1], [st]

        def step(t):
            lg, box[0] = hj.step(t, box[0])
            return lg
    toks = []
    nxt = logits.argmax(-1)
    toks.append(int(nxt[0]))
    logits = step(nxt)  # warm-up step
    t = time.perf_counter()
    for _ in range(n - 1):
        nxt = logits.argmax(-1)
        toks.append(int(nxt[0]))
        logits = step(nxt)
    return B * (n - 1) / (time.perf_counter() - t), toks


def weight_format_bpb(checkpoint: str) -> dict[str, float]:
    """Validation bits per byte of a trained model with each weight format (projection
    weights rounded as the fused decoder stores them; the forward is the model's own)."""
    from hjseq.models import data as D
    from hjseq.models.checkpoint import load_checkpoint
    from hjseq.models.generate import load_model
    from hjseq.models.quantize import fake_quantize, validation_bpb

    model = load_model(checkpoint).float().eval()
    ck = Path(checkpoint) / "checkpoint.pt"
    train = load_checkpoint(ck)["config"].get("train", {}) if ck.is_file() else {}
    seq_len, batch = train.get("seq_len", 256), train.get("batch_size", 16)
    windows = train.get("eval_batches", 8) * batch
    corpus = D.load_corpus(train.get("data"), train.get("val_fraction", 0.05))
    out = {}
    for fmt in FORMATS:
        m = model if fmt == "float32" else fake_quantize(model, fmt)
        out[fmt] = validation_bpb(m, corpus.val, seq_len, windows, batch)
    print(f"validation bits/byte of {checkpoint} ({windows} windows of {seq_len}): " + ", ".join(
        f"{f} {v:.5f}" + (f" ({v - out['float32']:+.5f})" if f != "float32" else "")
        for f, v in out.items()))
    return out


# ------------------------------------------------------------------------------ llama.cpp
def llama_cpp_build(timeout: int) -> tuple[Path | None, str]:
    """``(llama-bench path, note)`` or ``(None, reason)``."""
    src_root = CACHE
    benches = sorted(src_root.glob("llama_cpp_python-*/vendor/llama.cpp/build/bin/llama-bench"))
    if benches:
        return benches[-1], f"cached build {benches[-1].parents[2]}"
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        return None, "cmake or a C++ compiler is not installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "llama-cpp-python", "--no-deps",
                        "--no-binary", ":all:", "-d", str(CACHE)], check=True, timeout=300,
                       capture_output=True)
        sdist = sorted(CACHE.glob("llama_cpp_python-*.tar.gz"))[-1]
        subprocess.run(["tar", "xzf", str(sdist), "-C", str(CACHE)], check=True)
        root = sorted(p for p in CACHE.glob("llama_cpp_python-*") if p.is_dir())[-1]
        cpp = root / "vendor" / "llama.cpp"
        left = lambda: max(1, timeout - (time.time() - t0))  # noqa: E731
        subprocess.run(["cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release",
                        "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"], cwd=cpp,
                       check=True, timeout=left(), capture_output=True)
        subprocess.run(["cmake", "--build", "build", "--target", "llama-bench", "-j2"],
                       cwd=cpp, check=True, timeout=left(), capture_output=True)
    except subprocess.TimeoutExpired:
        return None, f"the build did not finish within {timeout} s (--llama-build-timeout)"
    except (subprocess.CalledProcessError, IndexError, OSError) as e:
        err = getattr(e, "stderr", b"") or b""
        return None, f"build failed: {e} {err[-500:].decode(errors='replace')}"
    exe = cpp / "build" / "bin" / "llama-bench"
    return (exe, f"built in {time.time() - t0:.0f} s") if exe.is_file() else (
        None, "the build produced no llama-bench")


def llama_cpp_rates(exe: Path, hf, threads: int, prompt: int, n_gen: int,
                    workdir: Path) -> dict[str, tuple[float, float] | str]:
    """{format: (prefill tok/s, decode tok/s) or a reason} via convert_hf_to_gguf + llama-bench."""
    cpp = exe.parents[2]
    hf_dir = workdir / "hf"
    hf.save_pretrained(hf_dir)
    env = {**os.environ, "PYTHONPATH": str(cpp / "gguf-py") + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    out: dict[str, tuple[float, float] | str] = {}
    for fmt, gtype in LLAMA_FORMATS.items():
        gguf = workdir / f"model-{gtype}.gguf"
        r = subprocess.run([sys.executable, str(cpp / "convert_hf_to_gguf.py"), str(hf_dir),
                            "--outtype", gtype, "--outfile", str(gguf)], env=env,
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0 or not gguf.is_file():
            out[fmt] = f"conversion failed: {r.stderr[-300:]}"
            continue
        r = subprocess.run([str(exe), "-m", str(gguf), "-p", str(prompt), "-n", str(n_gen),
                            "-t", str(threads), "-r", "3", "-o", "json"], capture_output=True,
                           text=True, timeout=900)
        try:
            rows = json.loads(r.stdout)
            pp = next(x["avg_ts"] for x in rows if x["n_prompt"] > 0 and x["n_gen"] == 0)
            tg = next(x["avg_ts"] for x in rows if x["n_gen"] > 0 and x["n_prompt"] == 0)
            out[fmt] = (float(pp), float(tg))
        except (ValueError, StopIteration, KeyError, TypeError):
            out[fmt] = f"llama-bench failed: {(r.stderr or r.stdout)[-300:]}"
    return out


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small shape, batch 1, few tokens")
    p.add_argument("--shapes", default="small,130m")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--tokens", type=int, default=None, help="decode steps timed per row")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-llama-cpp", action="store_true")
    p.add_argument("--llama-build-timeout", type=int, default=600)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--bpb-checkpoint", metavar="DIR", default=None,
                   help="a trained model (hjseq train --out DIR): report its validation bits "
                   "per byte with fp32, bf16 and int8 weights (the training run's windows)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = ["small"] if args.quick else [s.strip() for s in args.shapes.split(",")]
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    res: dict = {"threads": args.threads, "load_avg_at_start": os.getloadavg()[0]}
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; threads {args.threads}; load average at start {res['load_avg_at_start']:.1f} "
          f"(the machine's other work shares the cores)")

    bw = read_bandwidth(args.repeats)
    gemv = gemv_rates(args.repeats)
    res.update(read_bandwidth_GBs=bw, gemv_GBs=gemv)
    print(f"read bandwidth (sum of 512 MB): {bw:.1f} GB/s")
    for k, v in gemv.items():
        print(f"GEMV 151 MB-fp32 matrix, {k}: {v:.1f} GB/s")

    if args.bpb_checkpoint:
        res["bpb"] = weight_format_bpb(args.bpb_checkpoint)

    if args.no_llama_cpp:
        llama_exe, llama_note = None, "--no-llama-cpp"
    elif args.quick and not sorted(CACHE.glob("llama_cpp_python-*/vendor/llama.cpp/build/bin/"
                                              "llama-bench")):
        llama_exe, llama_note = None, "--quick does not build llama.cpp (no cached build)"
    else:
        llama_exe, llama_note = llama_cpp_build(args.llama_build_timeout)
    print(f"llama.cpp: {llama_note}")
    res["llama_cpp"] = llama_note

    rows = []
    for shape in shapes:
        d, n_layers = SHAPES[shape]
        hf, hj = build_models(d, n_layers)
        n = args.tokens or (32 if args.quick else (128 if shape == "small" else 24))
        ids = torch.randint(0, 256, (1, 512), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            t_hj = median_time(lambda: hj(ids), 3)
            t_hf = median_time(lambda: hf(ids, use_cache=False), 3)
        print(f"\n== {shape}: {n_layers} x Mamba, d={d}; prefill 512 tokens: hjseq "
              f"{512 / t_hj:,.0f} tok/s, HF {512 / t_hf:,.0f} tok/s ({t_hf / t_hj:.1f}x)")
        decs = {fmt: FusedDecoder(hj, fmt) for fmt in FORMATS}
        base_rate, _ = hj_decode_rate(hj, None, 1, min(n, 32))
        print(f"hjseq unfused HJLM.step, batch 1: {base_rate:,.1f} tok/s")
        row = {"shape": shape, "prefill_hjseq": 512 / t_hj, "prefill_hf": 512 / t_hf,
               "hjseq_unfused_b1": base_rate, "decode": {}}
        print(f"{'batch':>5} {'HF tok/s':>10} " + " ".join(
            f"{'hjseq ' + f:>16} {'bound':>6}" for f in FORMATS) + f" {'x HF (fp32)':>11}")
        for B in batches:
            hf_rate, hf_toks = hf_decode_rate(hf, B, n)
            cells, entry = [], {"hf": hf_rate}
            for fmt, dec in decs.items():
                rate, toks = hj_decode_rate(hj, dec, B, n)
                frac = rate / (B * bw * 1e9 / dec.weight_bytes)
                entry[fmt] = {"tok_s": rate, "bound_fraction": frac,
                              "weight_MB": dec.weight_bytes / 1e6}
                if fmt == "float32" and B == 1:
                    entry["tokens_identical_to_hf"] = toks == hf_toks
                cells.append(f"{rate:>16,.1f} {frac:>6.0%}")
            print(f"{B:>5} {hf_rate:>10,.1f} " + " ".join(cells) +
                  f" {entry['float32']['tok_s'] / hf_rate:>10.1f}x")
            row["decode"][B] = entry
        b1 = row["decode"].get(1)
        if b1:
            print(f"greedy tokens identical to HF (batch 1, fp32): "
                  f"{b1['tokens_identical_to_hf']}; weights read per step: " + ", ".join(
                      f"{f} {d.weight_bytes / 1e6:.1f} MB" for f, d in decs.items()))
            print(f"bf16 / fp32 decode (batch 1): "
                  f"{b1['bfloat16']['tok_s'] / b1['float32']['tok_s']:.2f}x")
        if 1 in row["decode"] and max(batches) > 1:
            bmax = max(batches)
            print(f"batch {bmax} / batch 1 (fp32): "
                  f"{row['decode'][bmax]['float32']['tok_s'] / b1['float32']['tok_s']:.1f}x")
        if llama_exe is not None:
            with tempfile.TemporaryDirectory() as tmp:
                lr = llama_cpp_rates(llama_exe, hf, args.threads, 512, n, Path(tmp))
            row["llama_cpp"] = lr
            for fmt, v in lr.items():
                if isinstance(v, str):
                    print(f"llama.cpp {LLAMA_FORMATS[fmt]}: {v}")
                else:
                    ours = row["decode"].get(1, {}).get(fmt, {}).get("tok_s", float("nan"))
                    print(f"llama.cpp {LLAMA_FORMATS[fmt]} (batch 1): prefill {v[0]:,.0f} "
                          f"tok/s, decode {v[1]:,.1f} tok/s; hjseq {fmt} decode / llama.cpp: "
                          f"{ours / v[1]:.2f}x")
        rows.append(row)
    res["rows"] = rows
    res["records"] = [  # benchmarks/run.py's combined table
        {"op": "decode step", "shape": f"{r['shape']} B={B}", "dtype": fmt,
         "backend": "fused cpu", "median_ms": 1000 * B / e[fmt]["tok_s"], "runs": 1,
         "ratio_vs": {"HF": e[fmt]["tok_s"] / e["hf"]},
         "extra": {"tok_s": e[fmt]["tok_s"], "bound_fraction": e[fmt]["bound_fraction"]}}
        for r in rows for B, e in r["decode"].items() for fmt in FORMATS]
    res["load_avg_at_end"] = os.getloadavg()[0]
    print(f"\nload average at end {res['load_avg_at_end']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
