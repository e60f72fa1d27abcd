"""Blocks. Recurrent ones (HJRNN, HJGRU, HJLSTM, HJMamba) run on the one engine
(:mod:`hjseq.engine`); HJAttention and LSELayer (``attention.py``, ``lse.py``) are imported
lazily."""
from __future__ import annotations

import importlib
from typing import Any

from .base import RecurrentBlock
from .gru import HJGRU
from .lstm import HJLSTM
from .rnn import HJRNN

_LAZY = {"HJMamba": ".ssm", "HJMamba2": ".mamba2", "HJMamba3": ".mamba3", "HJAttention": ".attention", "LSELayer": ".lse"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HJRNN", "HJGRU", "HJLSTM", "HJMamba", "HJMamba2", "HJMamba3", "HJAttention", "LSELayer", "RecurrentBlock"]
