"""Sampling from an :class:`~hjseq.models.lm.HJLM`, and the ``hjseq generate`` command.

Decoding is recurrent: the prompt runs once through ``forward(..., return_state=True)``
(recurrent blocks return their O(1) state, attention its KV cache), then each new token
costs one ``step``. ``hjseq generate --checkpoint DIR --prompt TEXT`` streams the text.
"""
from __future__ import annotations

import argparse
import codecs
import sys
import time
from dataclasses import dataclass, field
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


def _decoder(model: HJLM, fused: bool | None, weights: str):
    """The fused decoder to use (``None``: ``HJLM.step``). ``fused=None`` takes it where it
    runs (a CPU model whose blocks all have a fused step); ``True`` insists."""
    from hjseq.models.decode import FusedDecoder, try_fused

    if fused is False:
        if weights != "auto":
            raise ValueError(f"weights={weights!r} needs the fused decoder (fused=False given)")
        return None
    if fused:
        return FusedDecoder(model, weights)
    dec = try_fused(model, weights)
    if dec is None and weights != "auto":
        raise ValueError(f"weights={weights!r} needs the fused decoder, which cannot run this "
                         f"model (a block without a fused step, or not on the CPU)")
    return dec


def _add_stats(stats: dict | None, **kw: float) -> None:
    if stats is not None:
        for k, v in kw.items():
            stats[k] = stats.get(k, 0) + v


@torch.no_grad()
def stream(model: HJLM, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           seed: int | None = None, fused: bool | None = None, weights: str = "auto",
           stats: dict | None = None) -> Iterator[int]:
    """Yield ``max_new_tokens`` sampled token ids after ``prompt`` (a non-empty id list).

    O(1) work per token: the prompt runs once through the parallel forward, then each token
    is one fused C++ step (:mod:`hjseq.models.decode`; ``fused=None``: where it runs, else
    ``HJLM.step``). ``weights``: the fused decoder's weight format ("auto", "float32",
    "bfloat16", "int8"). ``stats``, if given, accumulates ``prefill_tokens``,
    ``prefill_s``, ``decode_tokens``, ``decode_s`` (time in the model and sampler only)."""
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
        dec = _decoder(model, fused, weights)
        if stats is not None:
            stats["backend"] = f"fused ({dec.weights} weights)" if dec else "HJLM.step"
        t0 = time.perf_counter()
        if dec is not None:
            logits, state = dec.prefill(model, [prompt])
        else:
            ids = torch.tensor([prompt], dtype=torch.long, device=device)
            logits, state = model(ids, return_state=True)
            logits = logits[:, -1]
        _add_stats(stats, prefill_tokens=len(prompt), prefill_s=time.perf_counter() - t0)
        for i in range(max_new_tokens):
            t0 = time.perf_counter()
            nxt = sample_next(logits, temperature, top_k, top_p, gen)
            if i + 1 < max_new_tokens:  # the step after the last token would go unused
                if dec is not None:
                    logits = dec.step(nxt, state)
                else:
                    logits, state = model.step(nxt, state)
            _add_stats(stats, decode_tokens=1, decode_s=time.perf_counter() - t0)
            yield int(nxt)
    finally:
        model.train(was_training)


def generate(model: HJLM, prompt: list[int], max_new_tokens: int, **kw) -> list[int]:
    """The ids of :func:`stream` as a list (keywords: temperature, top_k, top_p, seed,
    fused, weights, stats)."""
    return list(stream(model, prompt, max_new_tokens, **kw))


@dataclass
class Request:
    """One prompt of a batch and its own sampling settings. ``stop``: token-id sequences;
    generation of this request ends when its output ends with one of them (the stop
    sequence is not returned). ``temperature == 0`` is greedy."""
    prompt: list[int]
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: list[list[int]] = field(default_factory=list)

    def check(self, i: int) -> None:
        if not self.prompt:
            raise ValueError(f"request {i}: prompt must hold at least one token")
        if self.max_new_tokens < 0:
            raise ValueError(f"request {i}: max_new_tokens must be >= 0, got "
                             f"{self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"request {i}: temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"request {i}: top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"request {i}: top_p must be in (0, 1], got {self.top_p}")
        if any(len(s) == 0 for s in self.stop):
            raise ValueError(f"request {i}: a stop sequence is empty")


def sample_rows(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor,
                generator: torch.Generator | None = None) -> Tensor:
    """Next ids ``(B,)`` from ``logits (B, V)`` with per-row settings (each ``(B,)``):
    temperature (0 = greedy), top_k (``V`` = all), top_p (1 = all). Row by row this is
    :func:`sample_next` (same masks: top-k, then the nucleus of what is left)."""
    logits = logits.float()
    greedy = logits.argmax(-1)
    hot = temperature > 0
    if not bool(hot.any()):
        return greedy
    lg = logits[hot] / temperature[hot, None].float()
    sorted_lg, order = torch.sort(lg, descending=True, dim=-1)
    rank = torch.arange(lg.shape[-1]).expand_as(sorted_lg)
    sorted_lg = sorted_lg.masked_fill(rank >= top_k[hot, None], float("-inf"))
    probs = torch.softmax(sorted_lg, dim=-1)
    drop = ((probs.cumsum(-1) - probs) >= top_p[hot, None].float()) & (top_p[hot, None] < 1)
    probs = probs.masked_fill(drop, 0.0)
    pick = torch.multinomial(probs, 1, generator=generator)
    out = greedy.clone()
    out[hot] = order.gather(-1, pick)[:, 0]
    return out


@torch.no_grad()
def generate_batch(model: HJLM, requests: list[Request], seed: int | None = None,
                   fused: bool | None = None, weights: str = "auto",
                   stats: dict | None = None) -> list[list[int]]:
    """Generate for a batch of requests (prompts of different lengths, each with its own
    max_new_tokens, temperature, top_k, top_p and stop sequences). Returns each request's
    new ids.

    With the fused decoder: a varlen prefill (equal-length prompts share one parallel
    forward), then one batched fused step per token for every request still running;
    finished requests leave the batch. Without it (a block with no fused step, e.g.
    attention, or not on the CPU) the requests run one after the other through
    :func:`stream` (same results, no batching)."""
    for i, r in enumerate(requests):
        r.check(i)
    outs: list[list[int]] = [[] for _ in requests]
    if not requests:
        return outs
    was_training = model.training
    model.eval()
    try:
        dec = _decoder(model, fused, weights)
        if stats is not None:
            stats["backend"] = f"fused ({dec.weights} weights)" if dec else "HJLM.step"
        if dec is None:
            for i, r in enumerate(requests):
                for tok in stream(model, r.prompt, r.max_new_tokens, r.temperature, r.top_k,
                                  r.top_p, None if seed is None else seed + i, fused=False,
                                  stats=stats):
                    outs[i].append(tok)
                    if _stopped(outs[i], r.stop):
                        break
            return outs
        gen = torch.Generator()
        gen.manual_seed(seed if seed is not None else torch.seed())
        V = dec.vocab_size
        temp = torch.tensor([r.temperature for r in requests], dtype=torch.float64)
        topk = torch.tensor([r.top_k or V for r in requests])
        topp = torch.tensor([r.top_p if r.top_p is not None else 1.0 for r in requests],
                            dtype=torch.float64)
        t0 = time.perf_counter()
        logits, state = dec.prefill(model, [r.prompt for r in requests])
        _add_stats(stats, prefill_tokens=sum(len(r.prompt) for r in requests),
                   prefill_s=time.perf_counter() - t0)
        active = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
        if len(active) < len(requests):
            state = state.select(active)
            logits = logits[active]
        t0 = time.perf_counter()
        while active:
            rows = torch.tensor(active)
            nxt = sample_rows(logits, temp[rows], topk[rows], topp[rows], gen)
            keep = []
            for j, (i, tok) in enumerate(zip(active, nxt.tolist())):
                outs[i].append(tok)
                r = requests[i]
                if _stopped(outs[i], r.stop):
                    continue
                if len(outs[i]) < r.max_new_tokens:
                    keep.append(j)
            _add_stats(stats, decode_tokens=len(active))
            if not keep:
                break
            if len(keep) < len(active):
                state = state.select(keep)
                nxt = nxt[keep]
                active = [active[j] for j in keep]
            logits = dec.step(nxt, state)
        _add_stats(stats, decode_s=time.perf_counter() - t0)
        return outs
    finally:
        model.train(was_training)


def _stopped(out: list[int], stops: list[list[int]]) -> bool:
    """True (and the stop sequence removed from ``out``) when ``out`` ends with a stop."""
    for s in stops:
        if len(out) >= len(s) and out[-len(s):] == list(s):
            del out[-len(s):]
            return True
    return False


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
        model = HJLM(ModelConfig.from_saved(ck["config"]["model"], str(path), "model"))
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
    p.add_argument("--stats", action="store_true",
                   help="print prefill and decode tokens/s (and the decoder used) to stderr "
                   "at the end")
    p.add_argument("--weights", choices=("auto", "float32", "bfloat16", "int8"),
                   default="auto", help="weight format of the fused CPU decoder: the model's "
                   "own (auto), bfloat16, or int8 with per-channel scales")
    p.add_argument("--prompts-file", metavar="FILE", default=None,
                   help="generate for every line of FILE as one batch (each line a prompt; "
                   "'\\n' in a line stands for a newline); replaces --prompt "
                   "(default: one --prompt)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop a completion when it ends with TEXT (not printed); repeatable "
                   "(default: no stop text)")


def main(args: argparse.Namespace) -> int:
    from hjseq.models.evaluate import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.checkpoint)  # bytes, BPE or HF tokenizer
    stats: dict | None = {} if getattr(args, "stats", False) else None
    stops = [tokenizer.encode(t) for t in getattr(args, "stop", [])]
    weights = getattr(args, "weights", "auto")
    if getattr(args, "prompts_file", None):
        return _main_batch(args, model, tokenizer, stops, weights, stats)
    prompt = tokenizer.encode(args.prompt)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(args.prompt)
    out: list[int] = []
    printed = 0  # tokens that could still begin a stop sequence are held back
    for tok in stream(model, prompt, args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed, weights=weights,
                      stats=stats):
        out.append(tok)
        if _stopped(out, stops):
            break
        held = max((n for s in stops for n in range(1, len(s)) if out[-n:] == s[:n]),
                   default=0)
        for t in out[printed:len(out) - held]:
            sys.stdout.write(decoder.decode(tokenizer.token_bytes(t)))
        printed = max(printed, len(out) - held)
        sys.stdout.flush()
    for t in out[printed:]:
        sys.stdout.write(decoder.decode(tokenizer.token_bytes(t)))
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    _print_stats(stats)
    return 0


def _main_batch(args: argparse.Namespace, model: HJLM, tokenizer, stops: list[list[int]],
                weights: str, stats: dict | None) -> int:
    lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
    prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts-file {args.prompts_file}: no non-empty line")
    reqs = [Request(tokenizer.encode(p), args.max_new_tokens, args.temperature, args.top_k,
                    args.top_p, stops) for p in prompts]
    outs = generate_batch(model, reqs, seed=args.seed, weights=weights, stats=stats)
    for i, (p, ids) in enumerate(zip(prompts, outs)):
        text = b"".join(tokenizer.token_bytes(t) for t in ids).decode("utf-8", "replace")
        sys.stdout.write(f"=== {i}\n{p}{text}\n")
    _print_stats(stats)
    return 0


def _print_stats(stats: dict | None) -> None:
    if stats is None:
        return
    rate = lambda n, s: f"{n / s:,.0f} tok/s" if s > 0 else "n/a"  # noqa: E731
    pt, ps = stats.get("prefill_tokens", 0), stats.get("prefill_s", 0.0)
    dt, ds = stats.get("decode_tokens", 0), stats.get("decode_s", 0.0)
    print(f"[stats] prefill {pt} tokens in {ps:.3f} s ({rate(pt, ps)}); decode {dt} tokens "
          f"in {ds:.3f} s ({rate(dt, ds)}); {stats.get('backend', '?')}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
