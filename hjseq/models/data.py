"""Byte-level data: the default corpus, the train/val split, batches and the unigram baseline.

The default corpus is the Python standard library's own ``.py`` sources on this machine
(``sysconfig.get_paths()["stdlib"]``, without ``site-packages``/``dist-packages``): sorted
file list, a deterministic split by file (CRC32 of the relative path), so it works offline
and gives the same split everywhere for a given Python version.

Batches are a pure function of ``(seed, step)``: step ``s`` draws its window offsets from a
generator seeded by ``(seed, s)``. The data position of a run is therefore just its step,
which makes ``--resume`` exact and lets DDP ranks shard one global batch without talking.
"""
from __future__ import annotations

import math
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hjseq.cli import UserError

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
# Data with more than this share of NUL bytes, or of bytes outside valid UTF-8, is refused
# as "not text" unless the caller allows binary data.
BINARY_THRESHOLD = 0.01


class DataError(UserError, ValueError):
    """The training data cannot be used (missing, empty, too short, not text); the message
    names the path and the fix."""


@dataclass
class Corpus:
    """Train and validation bytes as uint8 tensors, and where they came from."""

    train: Tensor
    val: Tensor
    name: str
    n_files: int
    files: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes) as read
    source: str = ""  # how the user named it, for messages: "--data notes/"

    def describe(self, max_files: int = 5) -> str:
        """Where the bytes came from: the files read (the first ``max_files``) and the
        byte counts of both splits."""
        total = sum(n for _, n in self.files)
        shown = ", ".join(f"{f} ({n:,} B)" for f, n in self.files[:max_files])
        more = f", ... ({len(self.files) - max_files} more)" if len(self.files) > max_files else ""
        return (f"{self.name}: read {self.n_files} file(s), {total:,} bytes"
                + (f": {shown}{more}" if shown else "") + "\n"
                f"  train {self.train.numel():,} bytes, validation {self.val.numel():,} bytes")


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library root and its ``.py`` files (sorted, relative to the root)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.relative_to(root) for p in root.rglob("*.py")
                   if not _SKIP_DIRS.intersection(p.relative_to(root).parts) and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files under the standard library at {root}; "
                                "pass --data FILE|DIR with your own text")
    return root, files


def _is_val(rel: Path, val_fraction: float) -> bool:
    return zlib.crc32(rel.as_posix().encode()) / 2**32 < val_fraction


def _split_files(root: Path, files: list[Path], val_fraction: float,
                 raw: dict[Path, bytes] | None = None) -> tuple[bytes, bytes]:
    """Split by file; when too few files leave one side empty, fall back to holding out the
    last ``val_fraction`` of the concatenated bytes."""
    train, val = [], []
    for rel in files:
        data = raw[rel] if raw is not None else (root / rel).read_bytes()
        (val if _is_val(rel, val_fraction) else train).append(data)
    if not train or not val:
        return _split_bytes(b"\n".join(train + val), val_fraction)
    return b"\n".join(train), b"\n".join(val)


def _split_bytes(raw: bytes, val_fraction: float) -> tuple[bytes, bytes]:
    cut = int(len(raw) * (1 - val_fraction))
    return raw[:cut], raw[cut:]


def non_text_bytes(raw: bytes) -> tuple[int, int]:
    """``(NUL bytes, bytes not part of valid UTF-8)`` in ``raw``."""
    invalid = len(raw) - len(raw.decode("utf-8", errors="ignore").encode("utf-8"))
    return raw.count(0), invalid


def check_text(contents: dict[str, bytes], source: str, allow_binary: bool = False) -> None:
    """Refuse data that is empty, or mostly not text: more than :data:`BINARY_THRESHOLD` of
    its bytes NUL or outside valid UTF-8 (unless ``allow_binary``). ``contents``: file name
    -> bytes; ``source``: how the user named the data (e.g. ``--data notes/``)."""
    total = sum(len(b) for b in contents.values())
    if total == 0:
        what = "the file is empty" if len(contents) == 1 else "its files are all empty"
        raise DataError(f"{source}: {what} (0 bytes); give a text file or directory with "
                        "at least a few KB of text")
    if allow_binary:
        return
    per_file = {name: non_text_bytes(b) for name, b in contents.items()}
    nul = sum(n for n, _ in per_file.values())
    invalid = sum(i for _, i in per_file.values())
    if max(nul, invalid) > BINARY_THRESHOLD * total:
        worst = sorted(per_file, key=lambda f: -sum(per_file[f]))[:3]
        raise DataError(
            f"{source}: this does not look like text: {nul / total:.1%} of its {total:,} "
            f"bytes are NUL and {invalid / total:.1%} are not valid UTF-8 (most in "
            f"{', '.join(worst)}); train on text, or pass --allow-binary to use raw bytes")


def load_corpus(data: str | Path | None = None, val_fraction: float = 0.05,
                allow_binary: bool = False) -> Corpus:
    """Read the corpus. ``data=None``: the standard library; a directory: all its files
    (recursively, sorted, hidden files skipped), split by file (by bytes if too few files);
    a file: its last ``val_fraction`` of bytes is the validation split.

    Raises :class:`DataError` for a missing path, an empty input, or (unless
    ``allow_binary``) data that is mostly not text (see :func:`check_text`)."""
    if data is None:
        root, files = stdlib_files()
        name, source = f"python stdlib ({root})", "the default corpus"
    else:
        path = Path(data)
        source = f"--data {path}"
        if path.is_dir():
            root = path
            files = sorted(p.relative_to(path) for p in path.rglob("*")
                           if p.is_file() and not any(s.startswith(".") for s in
                                                      p.relative_to(path).parts))
            if not files:
                raise DataError(f"{source}: the directory holds no (non-hidden) files; "
                                "put text files in it")
            name = str(path)
        elif path.is_file():
            root, files, name = path.parent, [Path(path.name)], str(path)
        else:
            raise DataError(f"{source}: no such file or directory; give a text FILE or DIR "
                            "(or leave --data out to train on the Python standard library)")
    try:
        raw = {rel: (root / rel).read_bytes() for rel in files}
    except OSError as e:
        raise DataError(f"{source}: cannot read {e.filename}: {e.strerror}") from None
    check_text({str(rel): b for rel, b in raw.items()}, source, allow_binary)
    if data is not None and Path(data).is_file():
        train, val = _split_bytes(raw[files[0]], val_fraction)
    else:
        train, val = _split_files(root, files, val_fraction, raw)
    shown = [str(data)] if data is not None and Path(data).is_file() else [str(f) for f in files]
    corpus = Corpus(torch.frombuffer(bytearray(train), dtype=torch.uint8),
                    torch.frombuffer(bytearray(val), dtype=torch.uint8), name, len(files),
                    [(f, len(raw[rel])) for f, rel in zip(shown, files)], source)
    return corpus


def check_lengths(corpus: Corpus, seq_len: int, eval_windows: int, val_fraction: float) -> None:
    """Both splits must hold a training window (``seq_len + 2`` bytes: a random offset, the
    window and its next-byte target), and the validation split ``eval_windows`` distinct
    evaluation windows (``seq_len + eval_windows`` bytes). Raises :class:`DataError` naming
    the data and the settings to change."""
    source = corpus.source or corpus.name
    need_train, need_val = seq_len + 2, seq_len + max(2, eval_windows)
    for split, have, need in (("training", corpus.train.numel(), need_train),
                              ("validation", corpus.val.numel(), need_val)):
        if have < need:
            total = corpus.train.numel() + corpus.val.numel()
            raise DataError(
                f"{source}: the {split} split holds {have:,} bytes (of {total:,}; val_fraction "
                f"= {val_fraction}), fewer than the {need:,} that seq_len = {seq_len}"
                + (f" and {eval_windows} evaluation windows" if split == "validation" else "")
                + " need; give more text, or lower [train].seq_len"
                + (" / eval_batches, or raise val_fraction" if split == "validation" else ""))


def _check_len(data: Tensor, seq_len: int, what: str) -> None:
    if data.numel() < seq_len + 2:
        raise ValueError(f"the {what} split has {data.numel()} bytes, fewer than seq_len + 2 = "
                         f"{seq_len + 2}; use more data or a smaller seq_len")


def windows(data: Tensor, offsets: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-byte targets ``(n, seq_len)`` (long) at the given start offsets."""
    idx = offsets[:, None] + torch.arange(seq_len + 1)
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def train_batch(data: Tensor, step: int, batch_size: int, seq_len: int, seed: int,
                rank: int = 0, world_size: int = 1, accum_steps: int = 1
                ) -> list[tuple[Tensor, Tensor]]:
    """This rank's micro-batches of the global batch of optimizer step ``step``.

    The global batch (``batch_size`` random windows, a function of ``(seed, step)``) is
    split into ``world_size`` equal contiguous shards, and each shard into ``accum_steps``
    equal micro-batches. Returns a list of ``(x, y)`` pairs, each ``(batch_size /
    (world_size * accum_steps), seq_len)``.
    """
    parts = world_size * accum_steps
    if batch_size % parts:
        raise ValueError(f"batch_size={batch_size} must be divisible by world_size * "
                         f"accum_steps = {world_size} * {accum_steps}")
    _check_len(data, seq_len, "train")
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    offsets = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=g)
    per_rank = batch_size // world_size
    mine = offsets[rank * per_rank:(rank + 1) * per_rank]
    return [windows(data, o, seq_len) for o in mine.chunk(accum_steps)]


def val_offsets(data: Tensor, n_windows: int, seq_len: int) -> Tensor:
    """``n_windows`` evenly spaced, fixed window offsets over the validation split."""
    _check_len(data, seq_len, "validation")
    last = data.numel() - seq_len - 1
    return torch.linspace(0, last, n_windows).long()


def unigram_bpb(train: Tensor, val: Tensor) -> float:
    """Bits per byte of the byte-frequency model fitted on ``train`` (add-one smoothing),
    measured on ``val``: the baseline a sequence model has to beat."""
    p = (torch.bincount(train.long(), minlength=256).double() + 1)
    p = p / p.sum()
    counts = torch.bincount(val.long(), minlength=256).double()
    return float(-(counts * p.log2()).sum() / counts.sum())


def bits_per_byte(mean_nats: float) -> float:
    """Convert a mean cross entropy per byte in nats to bits per byte."""
    return mean_nats / math.log(2)


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids: list[int] | Tensor) -> str:
    """Bytes to text (invalid UTF-8 shown as U+FFFD). Ids must be bytes (< 256)."""
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    if any(not 0 <= int(i) < 256 for i in ids):
        raise ValueError("decode expects byte ids in [0, 256); this model's vocabulary is not "
                         "byte-level, so decode its ids with its own tokenizer")
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
