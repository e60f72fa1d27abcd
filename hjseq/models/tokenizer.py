"""Tokenizers of ``HJLM`` models: raw bytes (the default) or a byte-level BPE.

``[train] tokenizer`` names one (:data:`TOKENIZER_KINDS`):

- ``"bytes"``: token = byte, vocabulary 256 (no file);
- ``"bpe:N"``: a byte-level BPE of N tokens, trained on the training split with the
  ``tokenizers`` library (offline, deterministic) and saved beside the model as
  ``tokenizer.json``. Its alphabet is the 256 bytes, so every text round-trips.

A directory holding ``tokenizer.json`` (an ``hjseq train`` model, or a Hugging Face
checkpoint, whose ``tokenizer_config.json``-only tokenizers are read through
``transformers`` when installed) gives its tokenizer through :func:`load_tokenizer`.

Every tokenizer knows the bytes of each token (:attr:`Tokenizer.byte_lengths`), so losses
are reported in bits per byte, ``Σ nats / (ln 2 · Σ bytes of the predicted tokens)``, which
compares across tokenizers.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

from hjseq.cli import UserError

TOKENIZER_KINDS = ("bytes", "bpe")  # "bytes", or "bpe:N" with N tokens
TOKENIZER_FILE = "tokenizer.json"
MAX_BPE_VOCAB = 1 << 20
# Long texts are encoded in chunks cut at a single newline between two non-blank
# characters: a byte-level pre-tokenizer splits there anyway, so the tokens are those of
# the whole text.
_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_CHUNK_CHARS = 1 << 16


class TokenizerError(UserError, ValueError):
    """A tokenizer setting or file that cannot be used; the message names it and the fix."""


def parse_tokenizer_spec(spec: str, where: str = "[train].tokenizer") -> tuple[str, int]:
    """``("bytes", 256)`` or ``("bpe", N)`` from ``"bytes"`` / ``"bpe:N"``; anything else
    raises :class:`TokenizerError` naming ``where``."""
    if spec == "bytes":
        return "bytes", 256
    kind, _, n = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if kind == "bpe" and n.isdigit() and 256 < int(n) <= MAX_BPE_VOCAB:
        return "bpe", int(n)
    raise TokenizerError(f"{where}: expected \"bytes\" or \"bpe:N\" with 256 < N <= "
                         f"{MAX_BPE_VOCAB} (the number of tokens, e.g. \"bpe:4096\"), got {spec!r}")


def _byte_alphabet() -> dict[int, str]:
    """The printable character standing for each byte in byte-level BPE vocabularies:
    printable Latin-1 bytes stand for themselves, the others for ``chr(256 + k)``."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_CHAR_TO_BYTE = {c: b for b, c in _byte_alphabet().items()}


def split_for_encoding(text: str, chunk_chars: int = _CHUNK_CHARS) -> list[str]:
    """``text`` cut into pieces of about ``chunk_chars`` characters at single newlines
    between non-blank characters (concatenating the pieces gives ``text``)."""
    pieces, start = [], 0
    while len(text) - start > chunk_chars:
        m = _CUT.search(text, start + chunk_chars)
        if m is None:
            break
        pieces.append(text[start:m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


class Tokenizer:
    """Text ↔ token ids. ``name``: ``"bytes"``, ``"bpe:N"`` or ``"hf"`` (a file from
    elsewhere); ``vocab_size``: number of ids; ``byte_lengths``: ``(vocab_size,)`` long, the
    UTF-8 bytes each token stands for."""

    name: str
    vocab_size: int
    byte_lengths: Tensor

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        """The bytes token ``token`` stands for (decode a stream with an incremental UTF-8
        decoder over these)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of ``ids`` (invalid UTF-8 shown as U+FFFD)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        self._check_ids(ids)
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def encode_bytes(self, raw: bytes) -> Tensor:
        """Token ids ``(n,)`` (int32) of ``raw`` read as UTF-8 (invalid bytes become U+FFFD)."""
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer's file into ``directory`` (nothing for bytes)."""

    def to_json(self) -> str | None:
        """The tokenizer file's text, or None for bytes."""
        return None

    def _check_ids(self, ids: Iterable[int]) -> None:
        bad = [int(i) for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside this {self.name} tokenizer's "
                             f"vocabulary [0, {self.vocab_size}); the ids come from another "
                             "model or tokenizer")


class ByteTokenizer(Tokenizer):
    """Token = byte of the UTF-8 text; 256 ids."""

    name = "bytes"
    vocab_size = 256

    def __init__(self) -> None:
        self.byte_lengths = torch.ones(256, dtype=torch.long)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token: int) -> bytes:
        return bytes([token])

    def encode_bytes(self, raw: bytes) -> Tensor:
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int32)


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` (a trained ``bpe:N`` or a Hugging Face ``tokenizer.json``).
    Byte-level vocabularies map each token to its bytes exactly; for others a token's bytes
    are those of its decoded text."""

    def __init__(self, tok, name: str = "hf") -> None:
        self.tok, self.name = tok, name
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        spec = json.loads(tok.to_str())
        byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        vocab = tok.get_vocab(with_added_tokens=True)
        added = {t["id"]: t["content"] for t in spec.get("added_tokens") or []}
        table: list[bytes] = [b""] * self.vocab_size
        for piece, i in vocab.items():
            if i in added:
                table[i] = added[i].encode("utf-8")
            elif byte_level and all(c in _CHAR_TO_BYTE for c in piece):
                table[i] = bytes(_CHAR_TO_BYTE[c] for c in piece)
            else:
                table[i] = tok.decode([i], skip_special_tokens=False).encode("utf-8")
        self._bytes = table
        self.byte_lengths = torch.tensor([len(b) for b in table], dtype=torch.long)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token: int) -> bytes:
        return self._bytes[token]

    def encode_bytes(self, raw: bytes) -> Tensor:
        pieces = split_for_encoding(raw.decode("utf-8", errors="replace"))
        out = self.tok.encode_batch_fast(pieces, add_special_tokens=False)
        return torch.tensor([i for e in out for i in e.ids], dtype=torch.int32)

    def save(self, directory: str | Path) -> None:
        from hjseq.models.checkpoint import atomic_write_bytes

        atomic_write_bytes(Path(directory) / TOKENIZER_FILE, self.to_json().encode("utf-8"))

    def to_json(self) -> str:
        return self.tok.to_str()


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError("subword tokenizers need the `tokenizers` package: pip install "
                             "tokenizers (or hjseq[train]); [train].tokenizer = \"bytes\" "
                             "needs nothing") from None
    return tokenizers


def train_bpe(raw: bytes, vocab_size: int) -> HFTokenizer:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``raw`` (read as UTF-8): the 256
    byte symbols, then merges of the most frequent adjacent pairs within GPT-2 pre-tokens.
    Deterministic (the same bytes give the same file); fewer tokens when the text runs out
    of pairs."""
    _tokenizers()
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    parse_tokenizer_spec(f"bpe:{vocab_size}", "train_bpe(vocab_size)")
    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(split_for_encoding(raw.decode("utf-8", errors="replace")), trainer)
    return HFTokenizer(tok, f"bpe:{vocab_size}")


def from_json(text: str, name: str = "hf") -> HFTokenizer:
    """The tokenizer of a ``tokenizer.json`` text."""
    _tokenizers()
    from tokenizers import Tokenizer as _Tok

    return HFTokenizer(_Tok.from_str(text), name)


def load_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The tokenizer saved in ``directory``: its ``tokenizer.json``, else (with
    ``transformers`` installed) the one its ``tokenizer_config.json`` describes; None when
    there is neither."""
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    if path.is_file():
        _tokenizers()
        try:
            return from_json(path.read_text(encoding="utf-8"), str(path))
        except Exception as e:  # tokenizers raises its own exception type on a bad file
            raise TokenizerError(f"{path} cannot be read as a tokenizer ({str(e)[:160]}); it is "
                                 "truncated or not a tokenizers file: save it again") from None
    if (directory / "tokenizer_config.json").is_file():
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise TokenizerError(f"{directory} has tokenizer_config.json but no tokenizer.json; "
                                 "install transformers to read it, or save a tokenizer.json "
                                 "there") from None
        try:
            hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as e:
            raise TokenizerError(f"{directory}/tokenizer_config.json: transformers cannot build "
                                 f"its tokenizer ({' '.join(str(e).split())[:160]})") from None
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None or backend.get_vocab_size(with_added_tokens=True) < 2:
            # transformers builds an empty tokenizer when the files the config names are absent
            raise TokenizerError(f"{directory}: tokenizer_config.json is there but transformers "
                                 "builds no vocabulary from it (no tokenizer.json, vocab/merges "
                                 "files or fast backend); save the tokenizer's tokenizer.json there")
        return HFTokenizer(backend, "hf")
    return None


def check_fits(tok: Tokenizer, vocab_size: int, where: str) -> None:
    """Every id of ``tok`` must be a row of the model's embedding (``vocab_size`` rows)."""
    if tok.vocab_size > vocab_size:
        raise TokenizerError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the model "
                             f"only {vocab_size} (vocab_size); they do not belong together")


def build_for_training(spec: str, train_bytes: bytes, saved_json: str | None = None) -> Tokenizer:
    """The tokenizer of a training run: bytes; the one saved in its checkpoint
    (``saved_json``, on resume); or a BPE trained on ``train_bytes``."""
    kind, n = parse_tokenizer_spec(spec)
    if kind == "bytes":
        return ByteTokenizer()
    if saved_json is not None:
        return from_json(saved_json, spec)
    return train_bpe(train_bytes, n)


def tokenize_corpus(spec: str, train: Tensor, val: Tensor, seq_len: int, eval_windows: int,
                    saved_json: str | None = None) -> tuple[Tokenizer, Tensor, Tensor]:
    """``(tokenizer, train ids, val ids)`` of a training run's byte splits (uint8 tensors).
    With ``"bytes"`` the splits are returned as they are. Otherwise the tokenizer is the
    saved one or trained on the training split, and both splits are encoded (int32); each
    must hold a training window and ``eval_windows`` evaluation windows of ``seq_len``
    tokens, else :class:`TokenizerError`."""
    tok = build_for_training(spec, b"" if spec == "bytes" or saved_json else
                             bytes(train.numpy()), saved_json)
    if isinstance(tok, ByteTokenizer):
        return tok, train, val
    ids = [tok.encode_bytes(bytes(t.numpy())) for t in (train, val)]
    for split, t, need in (("training", ids[0], seq_len + 2),
                           ("validation", ids[1], seq_len + max(2, eval_windows))):
        if t.numel() < need:
            raise TokenizerError(f"[train].tokenizer = {spec!r}: the {split} split encodes to "
                                 f"{t.numel():,} tokens, fewer than the {need:,} seq_len = "
                                 f"{seq_len} needs; give more text or lower [train].seq_len")
    return tok, ids[0], ids[1]


__all__ = ["TOKENIZER_KINDS", "TOKENIZER_FILE", "Tokenizer", "ByteTokenizer", "HFTokenizer",
           "TokenizerError", "parse_tokenizer_spec", "train_bpe", "from_json", "load_tokenizer",
           "check_fits", "build_for_training", "split_for_encoding", "tokenize_corpus"]
