"""``hjseq analyze``: the ε lens on an LSE toy problem or on an ``HJLM`` checkpoint.

    hjseq analyze --toy [--size small|full] [--out out/analyze]      # the paper's reproductions
    hjseq analyze CHECKPOINT_DIR [--text "..."] [--out out/analyze]  # a trained HJLM

On a checkpoint (``HJLM.save_pretrained`` directory, ``hjseq train --out`` directory or
``checkpoint.pt``, as ``hjseq generate`` loads them) it reports, on a prompt
(``--text``, byte-level models) or seeded random tokens: per-head attention entropies and
effective number of keys, per-LSE-unit attribution entropies and the curvature bound, the
viscosities of every block, and the tropical (ε → 0) model's deviation from the original
(logit change, next-token agreement). Writes ``analysis.json`` and plots into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?",
                        help="HJLM save_pretrained directory, `hjseq train --out` directory, or checkpoint.pt")
    parser.add_argument("--toy", action="store_true", help="run the LSE toy reproductions instead of a checkpoint")
    parser.add_argument("--size", choices=("small", "full"), default="small", help="toy problem sizes")
    parser.add_argument("--out", default="out/analyze", help="output directory (default: out/analyze)")
    parser.add_argument("--text", default=None, help="prompt for a byte-level checkpoint")
    parser.add_argument("--seq-len", type=int, default=64, help="random-token prompt length (no --text)")
    parser.add_argument("--batch", type=int, default=4, help="random-token prompts (no --text)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="write JSON only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def main(args: argparse.Namespace) -> int:
    if args.toy == bool(args.checkpoint):
        raise SystemExit("hjseq analyze: give either a CHECKPOINT directory or --toy (not both, not neither)")
    out = Path(args.out)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.toy:
        from hjseq.analysis import report
        from hjseq.analysis import reproduce as R

        summary = report.run(out, R.FULL if args.size == "full" else R.SMALL, make_plots=not args.no_plots)
        print(json.dumps(summary, indent=1))
        return 0
    from hjseq.models.generate import load_model

    model = load_model(args.checkpoint).eval()
    ids = prompt_ids(model, args.text, args.batch, args.seq_len, args.seed)
    result = analyze_model(model, ids)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'analysis.json'}")
    if not args.no_plots and result["attention"]:
        print(f"wrote {plot_attention_entropy(result, out / 'attention_entropy.png')}")
    print(json.dumps(result["tropical"], indent=1))
    return 0


def prompt_ids(model: nn.Module, text: str | None, batch: int, seq_len: int, seed: int) -> Tensor:
    """``(B, L)`` token ids: the UTF-8 bytes of ``text`` (byte-level vocabularies), else
    seeded random tokens."""
    vocab = model.config.vocab_size
    if text is not None:
        if vocab < 256:
            raise ValueError(f"--text needs a byte-level model (vocab_size >= 256), this one has {vocab}")
        ids = list(text.encode("utf-8"))
        if not ids:
            raise ValueError("--text is empty")
        return torch.tensor([ids])
    if batch < 1 or seq_len < 1:
        raise ValueError(f"--batch and --seq-len must be >= 1, got {batch}, {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq_len), generator=gen)


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
    fig, ax = plt.subplots(figsize=(1 + 0.5 * width, 1 + 0.4 * len(rows)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma_r", aspect="auto")
    ax.set_yticks(range(len(rows)), [a["module"] for a in result["attention"]], fontsize=7)
    ax.set_xlabel("head")
    ax.set_title("attention entropy / log(#keys)")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)
