"""Sampling from an :class:`~hjseq.models.lm.HJLM`, and the ``hjseq generate`` command.

Decoding is recurrent: the prompt runs once through ``forward(..., return_state=True)``
(recurrent blocks return their O(1) state, attention its KV cache), then each new token
costs one ``step``. ``hjseq generate --checkpoint DIR --prompt TEXT`` streams the text.
"""
from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from hjseq.models import data as D
from hjseq.models.lm import HJLM


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Mask (to −inf) all but the ``top_k`` largest logits and, of those, all outside the
    smallest set whose probability reaches ``top_p`` (nucleus). ``logits (B, V)``."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        mask = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(mask, float("-inf"))
    return logits


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Next token ids ``(B,)`` from ``logits (B, V)``; ``temperature == 0`` is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def stream(model: HJLM, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           seed: int | None = None) -> Iterator[int]:
    """Yield ``max_new_tokens`` sampled token ids after ``prompt`` (a non-empty id list)."""
    if not prompt:
        raise ValueError("prompt must hold at least one token (e.g. a newline)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else torch.seed())
    try:
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        logits, state = model(ids, return_state=True)
        logits = logits[:, -1]
        for _ in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, gen)
            yield int(nxt)
            logits, state = model.step(nxt, state)
    finally:
        model.train(was_training)


def generate(model: HJLM, prompt: list[int], max_new_tokens: int, **kw) -> list[int]:
    """The ids of :func:`stream` as a list (keywords: temperature, top_k, top_p, seed)."""
    return list(stream(model, prompt, max_new_tokens, **kw))


def load_model(checkpoint: str | Path) -> HJLM:
    """A model from a ``save_pretrained`` directory, a ``hjseq train --out`` directory (its
    ``model/`` if finished, else its ``checkpoint.pt``) or a ``checkpoint.pt`` file."""
    from hjseq.models.checkpoint import (CHECKPOINT_NAME, CheckpointError, check_weights,
                                         load_checkpoint, load_pretrained)
    from hjseq.models.config import ModelConfig

    path = Path(checkpoint)
    if (path / "config.json").is_file():
        return load_pretrained(path)
    if (path / "model" / "config.json").is_file():
        return load_pretrained(path / "model")
    if path.is_file() or (path / CHECKPOINT_NAME).is_file():
        ck = load_checkpoint(path)
        model = HJLM(ModelConfig.from_dict(ck["config"]["model"], str(path), "model"))
        check_weights(model.state_dict(), ck["model"], path)
        model.load_state_dict(ck["model"])
        return model
    raise CheckpointError(f"{path}: no model there; expected a save_pretrained directory "
                          f"(config.json + model.safetensors), a `hjseq train` output "
                          f"directory (e.g. runs/small), or a {CHECKPOINT_NAME} file")


def _number(kind: type, low: float, high: float | None = None, low_open: bool = False,
            what: str = ""):
    """An argparse type: a ``kind`` number in [low, high] ((low, high] if ``low_open``);
    anything else is a usage error naming the flag (argparse adds it) and the range."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}")
        if (v <= low if low_open else v < low) or (high is not None and v > high):
            rng = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high else "")
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v
    return parse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR|FILE",
                   help="what `hjseq train` wrote: its --out directory (e.g. runs/small), its "
                   "model/ directory, or a checkpoint.pt")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", "-n", type=_number(int, 0, what="an int"), default=300,
                   metavar="N", help="number of bytes (tokens) to generate")
    p.add_argument("--temperature", type=_number(float, 0), default=0.8,
                   help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=_number(int, 1, what="an int"), default=None,
                   help="sample among the k most likely tokens only (default: all)")
    p.add_argument("--top-p", type=_number(float, 0, 1, low_open=True), default=0.95,
                   help="nucleus sampling: the smallest set of tokens whose probability "
                   "reaches p")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")


def main(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint)
    if model.config.vocab_size != 256:
        print("hjseq generate: this model is not byte-level (vocab_size "
              f"{model.config.vocab_size}); generate with its tokenizer from Python",
              file=sys.stderr)
        return 2
    prompt = D.encode(args.prompt)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(args.prompt)
    for tok in stream(model, prompt, args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed):
        sys.stdout.write(decoder.decode(bytes([tok])))
        sys.stdout.flush()
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    return 0
