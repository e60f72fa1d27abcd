"""Bits per byte of a model on a text, and the ``hjseq eval`` command.

    hjseq eval --checkpoint runs/small --data notes.txt          # whole file, windows of 256
    hjseq eval --checkpoint runs/small --data notes.txt --json

The text is encoded with the checkpoint's own tokenizer (bytes, a trained BPE, or a
Hugging Face directory's ``tokenizer.json``) and cut into windows of ``seq_len + 1`` tokens;
each window predicts its last ``seq_len`` tokens from the tokens before them in the window.
Reported, over all predicted tokens t:

    bpb        = Σ_t nats_t / (ln 2 · Σ_t bytes(t))     (bytes of the text; compares across tokenizers)
    perplexity = exp(Σ_t nats_t / #tokens)               (per token; depends on the tokenizer)

``--windows N`` scores N evenly spaced windows instead of the whole text: the windows
``hjseq train`` uses for its validation figure (``eval_batches · batch_size`` of them on the
validation split), so the two numbers agree.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, TextIO

import torch
from torch import Tensor, nn

from hjseq.cli import UserError
from hjseq.models.tokenizer import ByteTokenizer, Tokenizer, check_fits, load_tokenizer


@dataclass
class Score:
    """Sums over the predicted tokens: ``nats`` (cross entropy), ``tokens``, ``bytes``."""

    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def __iadd__(self, other: "Score") -> "Score":
        self.nats += other.nats
        self.tokens += other.tokens
        self.bytes += other.bytes
        return self

    @property
    def bpb(self) -> float:
        """Bits per byte of text: ``nats / (ln 2 · bytes)``."""
        return self.nats / (math.log(2) * max(self.bytes, 1))

    @property
    def perplexity(self) -> float:
        """Per-token perplexity ``exp(nats / tokens)``."""
        return math.exp(self.nats / max(self.tokens, 1))


def window_offsets(n_tokens: int, seq_len: int, n_windows: int | None = None) -> Tensor:
    """Start offsets of the windows (each ``seq_len + 1`` tokens) over ``n_tokens`` tokens:
    ``n_windows`` evenly spaced ones (the trainer's validation windows), or with None
    non-overlapping windows covering the text (the last one ends at the text's end)."""
    last = n_tokens - seq_len - 1
    if last < 0:
        raise UserError(f"the text holds {n_tokens} tokens, fewer than seq_len + 1 = "
                        f"{seq_len + 1}; give a longer text or a smaller --seq-len")
    if n_windows is not None:
        return torch.linspace(0, last, n_windows).long()
    offsets = torch.arange(0, last + 1, seq_len)
    if int(offsets[-1]) != last:  # the tail: a last window ending at the text's end,
        offsets = torch.cat([offsets, torch.tensor([last])])  # scored on its new tokens only
    return offsets


@torch.no_grad()
def score_windows(model: nn.Module, ids: Tensor, offsets: Tensor, seq_len: int,
                  byte_lengths: Tensor | None = None, batch_size: int = 8,
                  device: torch.device | str = "cpu", autocast: Callable[[], object] | None = None,
                  skip: Tensor | None = None, on_batch: Callable[[int], None] | None = None) -> Score:
    """Sum of next-token cross entropies (nats), tokens and bytes over the windows
    ``ids[o : o + seq_len + 1]`` for o in ``offsets``.

    ids: ``(n,)`` token ids (any integer dtype); byte_lengths: ``(V,)`` bytes per token
    (None: one byte per token); skip: ``(len(offsets),)`` leading targets of each window
    not counted (already scored by the previous window). ``model(x)`` maps ``(B, L)`` ids to
    ``(B, L, V)`` logits."""
    device = torch.device(device)
    total = Score()
    idx = torch.arange(seq_len + 1)
    for start in range(0, len(offsets), batch_size):
        o = offsets[start:start + batch_size]
        chunk = ids[o[:, None] + idx].long()
        x, y = chunk[:, :-1].to(device), chunk[:, 1:].to(device)
        with (autocast() if autocast is not None else nullcontext()):
            logits = model(x)
        nats = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                           y.reshape(-1), reduction="none").view(y.shape)
        keep = torch.ones_like(y, dtype=torch.bool)
        if skip is not None:
            keep &= torch.arange(seq_len, device=device)[None, :] >= skip[start:start + len(o), None].to(device)
        nb = (byte_lengths.to(device)[y] if byte_lengths is not None else torch.ones_like(y))
        total += Score(float(nats[keep].double().sum()), int(keep.sum()), int(nb[keep].sum()))
        if on_batch is not None:
            on_batch(len(o))
    return total


def load_model_and_tokenizer(checkpoint: str | Path) -> tuple[nn.Module, Tokenizer]:
    """A model and its tokenizer from what ``hjseq train`` wrote (its ``--out`` directory,
    ``model/`` or ``checkpoint.pt``), a ``save_pretrained`` directory, or a Hugging Face
    ``MambaForCausalLM`` directory (with its ``tokenizer.json``). Byte-level models without
    a tokenizer file get :class:`ByteTokenizer`."""
    from hjseq.models.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from hjseq.models.generate import load_model
    from hjseq.models.lm import HJLM
    from hjseq.models.tokenizer import from_json

    path = Path(checkpoint)
    cfg = path / "config.json"
    hf = False
    if cfg.is_file():
        try:
            hf = json.loads(cfg.read_text()).get("model_type") != "hjseq"
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            hf = False  # load_model names the broken file
    if hf:
        model = getattr(HJLM, "from_hf", HJLM.from_hf_mamba)(path)
        tok = getattr(model, "tokenizer", None) or load_tokenizer(path)
    else:
        model = load_model(path)
        tok = None
        for where in (path, path / "model"):
            if (where / "config.json").is_file():
                tok = load_tokenizer(where)
                break
        else:
            ck_path = path if path.is_file() else path / CHECKPOINT_NAME
            saved = load_checkpoint(ck_path).get("tokenizer")
            tok = from_json(saved, str(ck_path)) if saved else None
    if tok is None:
        if model.config.vocab_size != 256:
            raise UserError(f"{path}: the model's vocabulary has {model.config.vocab_size} tokens "
                            "but no tokenizer.json was found beside it; put the tokenizer's "
                            "tokenizer.json in that directory")
        tok = ByteTokenizer()
    check_fits(tok, model.config.vocab_size, str(path))
    return model, tok


class _Progress:
    """``eval: [####....] 12/40 windows, 0:07`` on stderr: redrawn in place on a terminal,
    one line per 10% otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.done, self.width = total, 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0, self.last_tenth = time.perf_counter(), -1

    def __call__(self, n: int) -> None:
        self.done += n
        tenth = 10 * self.done // max(self.total, 1)
        if not self.tty and tenth == self.last_tenth:
            return
        self.last_tenth = tenth
        filled = self.width * self.done // max(self.total, 1)
        s = int(time.perf_counter() - self.t0)
        line = (f"eval: [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"windows, {s // 60}:{s % 60:02d}")
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if self.tty and self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def evaluate_text(model: nn.Module, tok: Tokenizer, raw: bytes, seq_len: int = 256,
                  batch_size: int = 8, n_windows: int | None = None, device: str = "cpu",
                  progress: bool = True, stream: TextIO | None = None) -> dict:
    """bpb and perplexity of ``model`` on the text ``raw`` (see the module docstring).
    Returns a JSON-able dict: bpb, perplexity, nats, tokens, bytes, windows, seq_len."""
    ids = tok.encode_bytes(raw)
    offsets = window_offsets(ids.numel(), seq_len, n_windows)
    skip = None
    if n_windows is None and len(offsets) > 1:  # the tail window re-reads scored tokens
        skip = torch.zeros(len(offsets), dtype=torch.long)
        skip[-1] = int(offsets[-2]) + seq_len - int(offsets[-1])
    was_training = model.training
    model.eval()
    try:
        s = score_windows(model, ids, offsets, seq_len, tok.byte_lengths, batch_size, device,
                          skip=skip, on_batch=_Progress(len(offsets), stream) if progress else None)
    finally:
        model.train(was_training)
    return {"bpb": s.bpb, "perplexity": s.perplexity, **asdict(s), "windows": len(offsets),
            "seq_len": seq_len, "tokenizer": tok.name}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR|FILE",
                   help="what `hjseq train` wrote (e.g. runs/small), a save_pretrained "
                   "directory, or a Hugging Face MambaForCausalLM directory")
    p.add_argument("--data", required=True, metavar="FILE", help="text file to score")
    p.add_argument("--seq-len", type=_positive, default=256, metavar="N",
                   help="tokens predicted per window")
    p.add_argument("--batch-size", type=_positive, default=8, metavar="N",
                   help="windows per forward pass")
    p.add_argument("--windows", type=_positive, default=None, metavar="N",
                   help="score N evenly spaced windows (as `hjseq train` validates) instead of "
                   "the whole text")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=_positive, default=None, metavar="N",
                   help="torch intra-op CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.is_file():
        raise UserError(f"--data {data}: no such file; give the text file to score")
    model, tok = load_model_and_tokenizer(args.checkpoint)
    model.to(args.device)
    result = evaluate_text(model, tok, data.read_bytes(), args.seq_len, args.batch_size,
                           args.windows, args.device)
    result = {"checkpoint": str(args.checkpoint), "data": str(data), **result}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{data}: {result['bpb']:.4f} bits/byte, token perplexity "
              f"{result['perplexity']:.3f} ({result['tokens']:,} tokens, {result['bytes']:,} "
              f"bytes, tokenizer {result['tokenizer']}, {result['windows']} windows of "
              f"{result['seq_len']})")
    return 0
