"""Train several block kinds at (about) the same parameter count on the same bytes and compare
their validation bits per byte: a table (Markdown) and a plot of validation bpb vs step.

    python examples/compare_blocks.py                       # stdlib corpus, ~150K params each
    python examples/compare_blocks.py --kinds mamba,lstm --params 300000 --steps 400
    python examples/compare_blocks.py --quick               # smoke run, seconds per kind

Each kind's width d_model is chosen so that its parameter count is closest to --params.
Writes OUT/compare.md, OUT/compare.json, OUT/compare.png and each run under OUT/<kind>/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hjseq.models import HJLM, load_config
from hjseq.models.train import train

# kind -> block list (one "layer"); attention gets an LSE MLP for its nonlinearity. HJAttention
# carries no positional encoding (NoPE), which handicaps the pure attention stack here.
FAMILIES: dict[str, list[dict]] = {
    "mamba": [{"kind": "mamba", "d_state": 16}],
    "attention": [{"kind": "attention", "n_heads": 4}, {"kind": "lse", "n_atoms": 4}],
    "lstm": [{"kind": "lstm"}],
    "gru": [{"kind": "gru"}],
    "rnn": [{"kind": "rnn"}],
    "lse": [{"kind": "lse", "n_atoms": 4}],  # no token mixing: a bigram-like baseline
}


def model_dict(kind: str, d_model: int, layers: int) -> dict:
    return {"d_model": d_model, "repeat": layers, "blocks": FAMILIES[kind]}


def width_for(kind: str, target: int, layers: int) -> tuple[int, int]:
    """The d_model (a multiple of 8) whose model's parameter count is closest to ``target``."""
    best = None
    for d in range(8, 1025, 8):
        n = HJLM(model_dict(kind, d, layers)).num_params()
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (d, n)
        if n > target:
            break
    assert best is not None
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="mamba,attention,lstm,gru,rnn")
    p.add_argument("--params", type=int, default=150_000, help="target parameter count")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--data", default=None, help="text file or directory (default: stdlib)")
    p.add_argument("--out", default="runs/compare_blocks")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 steps, 20K params")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.params, args.seq_len, args.batch_size = 10, 20_000, 32, 4
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in FAMILIES:
            p.error(f"--kinds: unknown kind {k!r}; one of {', '.join(FAMILIES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for kind in kinds:
        d_model, n_params = width_for(kind, args.params, args.layers)
        eval_every = max(1, args.steps // 5)
        run = load_config({"model": model_dict(kind, d_model, args.layers), "train": {
            "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "lr": args.lr, "warmup_steps": max(1, args.steps // 10), "eval_interval": eval_every,
            "eval_batches": 4, "log_interval": max(1, args.steps // 20),
            "checkpoint_interval": args.steps, "data": args.data, "sample_chars": 0}})
        print(f"== {kind}: d_model {d_model}, {n_params:,} params", file=sys.stderr)
        t0 = time.perf_counter()
        res = train(run, out / kind)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (out / kind / "metrics.jsonl").read_text().splitlines()]
        curve = [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r]
        results.append({"kind": kind, "d_model": d_model, "params": n_params,
                        "tokens": args.steps * args.batch_size * args.seq_len,
                        "wall_s": round(wall, 1), "val_bpb": res.val_bpb,
                        "unigram_bpb": res.unigram_bpb, "curve": curve})
    lines = ["| block | d_model | params | tokens seen | wall s | val bpb | unigram bpb |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['kind']} | {r['d_model']} | {r['params']:,} | {r['tokens']:,} | "
              f"{r['wall_s']} | {r['val_bpb']:.4f} | {r['unigram_bpb']:.4f} |" for r in results]
    table = "\n".join(lines)
    print(table)
    (out / "compare.md").write_text(table + "\n")
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(*zip(*r["curve"]), "o-", label=f"{r['kind']} ({r['params'] / 1e3:.0f}K)")
    ax.axhline(results[0]["unigram_bpb"], color="gray", ls="--", label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("validation bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
