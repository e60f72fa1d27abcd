"""``hjseq analyze``: the ε lens on an LSE toy problem or on an ``HJLM`` checkpoint.

    hjseq analyze --toy [--size small|full] [--out out/analyze]   # the paper's reproductions
    hjseq analyze runs/small                                      # a trained HJLM

On a checkpoint (a ``hjseq train`` output directory, its ``model/`` directory or
``checkpoint.pt``, as ``hjseq generate`` loads them) it reads windows of real validation
text (the run's own validation split; ``--data`` for other text, ``--text`` for one prompt),
encoded with the checkpoint's own tokenizer (bytes, a trained BPE, or an imported model's
``tokenizer.json``; bpb counts the bytes each token stands for), and reports: for
recurrent blocks (Mamba, RNN, GRU, LSTM) the step Δ per layer, the decay spectrum, the
deviation from the characteristic ODE and the effect of ε noise on validation bpb
(:mod:`hjseq.analysis.recurrent`);
per-head attention entropies; per-LSE-unit attribution entropies and the curvature bound;
the viscosity of every block; and the tropical (ε → 0) model's deviation from the original.
Writes ``analysis.json`` and one figure per block kind into ``--out`` (default:
``<run>/analysis``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hjseq.cli import UserError

if TYPE_CHECKING:
    from hjseq.models.tokenizer import Tokenizer


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", metavar="RUN_DIR",
                        help="what `hjseq train` wrote: its --out directory (e.g. runs/small), "
                        "its model/ directory, or a checkpoint.pt")
    parser.add_argument("--toy", action="store_true",
                        help="run the LSE toy reproductions instead of a checkpoint")
    parser.add_argument("--size", choices=("small", "full"), default="small",
                        help="toy problem sizes")
    parser.add_argument("--out", metavar="DIR",
                        help="output directory (default: RUN_DIR/analysis; out/analyze for --toy)")
    parser.add_argument("--data", metavar="FILE|DIR",
                        help="text whose validation split is read (default: the run's own data)")
    parser.add_argument("--text", default=None,
                        help="analyze this one prompt (default: validation windows)")
    parser.add_argument("--seq-len", type=int, default=128, metavar="L",
                        help="tokens per validation window")
    parser.add_argument("--batch", type=int, default=4, metavar="B",
                        help="number of validation windows")
    parser.add_argument("--ode-tokens", type=int, default=8, metavar="K",
                        help="tokens compared against the characteristic ODE per recurrent layer")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the ε-noise draws")
    parser.add_argument("--no-plots", action="store_true", help="write JSON only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's)")


def main(args: argparse.Namespace) -> int:
    if args.toy == bool(args.checkpoint):
        raise UserError("give either a RUN_DIR (e.g. runs/small) or --toy (not both, not "
                        "neither)")
    for flag, v in (("--seq-len", args.seq_len), ("--batch", args.batch),
                    ("--ode-tokens", args.ode_tokens)):
        if v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.toy:
        from hjseq.analysis import report
        from hjseq.analysis import reproduce as R

        out = Path(args.out or "out/analyze")
        summary = report.run(out, R.FULL if args.size == "full" else R.SMALL, make_plots=not args.no_plots)
        print(json.dumps(summary, indent=1))
        return 0
    from hjseq.analysis import recurrent
    from hjseq.models.evaluate import load_model_and_tokenizer

    t0 = time.perf_counter()
    src = Path(args.checkpoint)
    model, tok = load_model_and_tokenizer(src)
    model.eval()
    run_dir = src.parent if src.is_file() or src.name == "model" else src
    out = Path(args.out) if args.out else run_dir / "analysis"
    ids, source = analysis_ids(tok, src, args)
    result = analyze_model(model, ids[:, :-1])
    result["input"] = source
    result["tokenizer"] = tok.name
    result["recurrent"] = recurrent.analyze_recurrent(model, ids[:, :-1], ids,
                                                      ode_tokens=args.ode_tokens, seed=args.seed,
                                                      byte_lengths=tok.byte_lengths)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    print(summary_text(result))
    print(f"wrote {out / 'analysis.json'}")
    if not args.no_plots:
        if result["attention"]:
            print(f"wrote {plot_attention_entropy(result, out / 'attention_entropy.png')}")
        for path in recurrent.plot_recurrent(result["recurrent"], out):
            print(f"wrote {path}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _run_train_config(src: Path) -> dict:
    """The ``[train]`` table of the run ``src`` belongs to ({} when no checkpoint is found)."""
    from hjseq.models.checkpoint import CHECKPOINT_NAME, load_checkpoint

    for cand in (src, src / CHECKPOINT_NAME, src.parent / CHECKPOINT_NAME):
        if cand.is_file() and cand.suffix == ".pt":
            return load_checkpoint(cand).get("config", {}).get("train", {})
    return {}


def analysis_ids(tok: "Tokenizer", src: Path, args: argparse.Namespace) -> tuple[Tensor, str]:
    """Token ids ``(B, L+1)`` to analyze (the last column is the next-token target of the
    noise sweep) and a description of where they come from: ``--text``, else ``--batch``
    evenly spaced windows of ``--seq-len + 1`` tokens of the validation split of ``--data``
    or of the run's own data, both encoded with ``tok``, the checkpoint's tokenizer."""
    from hjseq.models import data as D

    if args.text is not None:
        ids = tok.encode(args.text)
        if not ids:
            raise UserError("--text is empty; give a prompt of at least one character")
        return torch.tensor([ids]), "--text"
    train_cfg = _run_train_config(src)
    data = args.data if args.data is not None else train_cfg.get("data")
    val_fraction = train_cfg.get("val_fraction", 0.05)
    corpus = D.load_corpus(data, val_fraction)
    val = corpus.val if tok.name == "bytes" else tok.encode_bytes(bytes(corpus.val.numpy()))
    unit = "bytes" if tok.name == "bytes" else "tokens"
    if val.numel() < args.seq_len + 2:
        raise UserError(f"the validation split of {corpus.name} holds {val.numel()} {unit}, "
                        f"fewer than --seq-len + 2 = {args.seq_len + 2}; give a smaller "
                        "--seq-len or more --data")
    offsets = D.val_offsets(val, args.batch, args.seq_len)
    x, y = D.windows(val, offsets, args.seq_len)
    return (torch.cat([x, y[:, -1:]], 1),
            f"{args.batch} windows of {args.seq_len} {unit} of the validation split of "
            f"{corpus.name}")


def summary_text(result: dict) -> str:
    """A short table of the recurrent ε lens, the noise sweep and the tropical deviation."""
    lines = [f"input: {result.get('input', '?')}"]
    rec = result.get("recurrent", {})
    if rec.get("layers"):
        lines.append(f"{'layer':<6}{'kind':<10}{'step Δ median [5%, 95%]':<30}"
                     f"{'decay > 0.99':>13}{'ODE max err':>13}{'order':>8}")
        for r in rec["layers"]:
            st, o = r["step"], r["ode"]
            order = o["observed_order"]
            lines.append(f"{r['layer']:<6}{r['kind']:<10}"
                         f"{st['median']:.3g} [{st['q05']:.3g}, {st['q95']:.3g}]".ljust(46)
                         + f"{r['decay']['fraction_above_0_99']:>13.3f}"
                         f"{o['global_max_error']:>13.2e}"
                         f"{(f'{order:.2f}' if isinstance(order, float) else str(order)):>8}")
        noise = rec["noise"]
        lines.append("validation bpb vs ε: " + ", ".join(f"{e:g}" for e in noise["eps"]))
        for name, row in noise["bpb"].items():
            lines.append(f"  {name:<24}" + " ".join(f"{v:.4f}" for v in row))
    for a in result.get("attention", []):
        lines.append(f"attention {a['module']}: normalized entropy per head "
                     + " ".join(f"{h:.2f}" for h in a["normalized_entropy_per_head"]))
    trop = result.get("tropical", {})
    if trop:
        lines.append(f"tropical (ε → 0) model: next-token agreement "
                     f"{trop['next_token_agreement']:.3f}, max |Δlogit| {trop['max_abs_logit_change']:.3g}")
    return "\n".join(lines)


def _capture_inputs(model: nn.Module, ids: Tensor, types: tuple) -> dict[str, Tensor]:
    """The input each matching submodule receives during ``model(ids)``, by name."""
    got: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, name=n: got.__setitem__(name, a[0].detach()))
             for n, m in model.named_modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return got


def analyze_model(model: nn.Module, ids: Tensor, max_tokens: int = 256) -> dict:
    """The ε lens of a language model on ``ids`` ``(B, L)``: JSON-able dict."""
    from hjseq.analysis.influence import attention_entropy
    from hjseq.analysis.tropical import _is_lse_units, tropicalize
    from hjseq.nn.attention import HJAttention

    B, L = ids.shape
    result: dict = {"tokens": int(ids.numel()), "blocks": [], "attention": [], "lse_units": []}
    for i, layer in enumerate(getattr(model, "layers", [])):
        mixer = getattr(layer, "mixer", layer)
        eps = getattr(mixer, "eps", getattr(getattr(mixer, "cell", None), "eps", None))
        if isinstance(eps, Tensor):
            eps = float(eps.detach().max())
        result["blocks"].append({"index": i, "kind": getattr(layer, "kind", type(mixer).__name__),
                                 "eps": None if eps is None else float(eps)})
    unit_types = tuple({type(m) for m in model.modules() if _is_lse_units(m)})
    inputs = _capture_inputs(model, ids, (HJAttention,) + unit_types)
    for name, m in model.named_modules():
        if name not in inputs:
            continue
        x = inputs[name]
        if isinstance(m, HJAttention):
            with torch.no_grad():
                pi = m.attribution_weights(x)
            H = attention_entropy(pi)  # (B, H, L)
            n_keys = torch.arange(1, L + 1, dtype=H.dtype) if m.causal else torch.full((L,), float(L))
            result["attention"].append({
                "module": name, "eps": m.eps, "causal": m.causal,
                "entropy_per_head": H.mean((0, 2)).tolist(),
                "normalized_entropy_per_head": (H / n_keys.log().clamp_min(1e-12))[..., 1:].mean((0, 2)).tolist(),
                "effective_keys_per_head": H.exp().mean((0, 2)).tolist(),
                "max_weight_mean": float(pi.amax(-1).mean()),
            })
        else:
            result["lse_units"].append(_lse_units_stats(name, m, x.reshape(-1, x.shape[-1])[:max_tokens]))
    trop, report = tropicalize(model)
    with torch.no_grad():
        logits, logits0 = model(ids).float(), trop.eval()(ids).float()
    result["tropical"] = {
        "report": report.to_dict(),
        "max_abs_logit_change": float((logits - logits0).abs().max()),
        "mean_abs_logit_change": float((logits - logits0).abs().mean()),
        "next_token_agreement": float((logits.argmax(-1) == logits0.argmax(-1)).float().mean()),
    }
    return result


def _lse_units_stats(name: str, m: nn.Module, x: Tensor) -> dict:
    """Attribution entropy and curvature of a bank of LSE units (``LSEMLP``) on tokens x ``(T, d)``."""
    with torch.no_grad():
        z = m.in_proj(x).unflatten(-1, (m.n_units, m.n_atoms)).double()  # (T, U, N)
        W = m.in_proj.weight.unflatten(0, (m.n_units, m.n_atoms)).double()  # (U, N, d)
        eps = float(m.eps)
        out = {"module": name, "eps": eps, "n_units": m.n_units, "n_atoms": m.n_atoms}
        if eps == 0:
            out["note"] = "tropical (ε = 0): one-hot weights, piecewise-linear units"
            return out
        pi = torch.softmax(z / eps, -1)
        H = -(pi * torch.log_softmax(z / eps, -1)).sum(-1)  # (T, U)
        mean = torch.einsum("tun,und->tud", pi, W)
        second = torch.einsum("tun,und,une->tude", pi, W, W)
        hess = (second - mean[..., :, None] * mean[..., None, :]) / eps
        norms = torch.linalg.matrix_norm(hess, ord=2)  # (T, U)
        bound = (W * W).sum(-1).amax(-1) / eps  # (U,)
        out.update({
            "mean_entropy": float(H.mean()), "log_n_atoms": math.log(m.n_atoms),
            "max_hessian_norm": float(norms.max()), "max_ratio_to_bound": float((norms / bound).max()),
            "bound_violated": bool((norms > bound * (1 + 1e-9)).any()),
        })
    return out


def plot_attention_entropy(result: dict, path: Path) -> Path:
    """Heatmap: normalised attention entropy per (layer, head)."""
    from hjseq.analysis.plots import _plt, _save

    plt = _plt()
    rows = [a["normalized_entropy_per_head"] for a in result["attention"]]
    width = max(len(r) for r in rows)
    grid = [r + [float("nan")] * (width - len(r)) for r in rows]
    fig, ax = plt.subplots(figsize=(max(7.0, 2.5 + 0.6 * width), max(3.5, 1.5 + 0.45 * len(rows))))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma_r", aspect="auto")
    ax.set_yticks(range(len(rows)), [a["module"] for a in result["attention"]], fontsize=8)
    ax.set_xticks(range(width), [str(h) for h in range(width)])
    ax.set_xlabel("head")
    ax.set_ylabel("attention layer")
    ax.set_title("attention entropy per head, normalised: H(π) / log(#keys)  (0 = one key, 1 = uniform)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="H / log(#keys)")
    path = _save(fig, path)
    plt.close(fig)
    return path
