"""Blocks. The recurrent ones (HJRNN, HJGRU, HJLSTM, HJMamba, HJMamba2, HJMamba3,
HJRetention, and any ``RecurrentBlock`` a user writes) run on the one engine
(:mod:`hjseq.engine`); HJAttention and LSELayer are the exact Hopf–Cole blocks."""
from __future__ import annotations

from .attention import HJAttention
from .base import RecurrentBlock
from .gru import HJGRU
from .lse import LSELayer
from .lstm import HJLSTM
from .mamba2 import HJMamba2
from .mamba3 import HJMamba3
from .retention import HJRetention
from .rnn import HJRNN
from .ssm import HJMamba

__all__ = ["HJRNN", "HJGRU", "HJLSTM", "HJMamba", "HJMamba2", "HJMamba3", "HJRetention",
           "HJAttention", "LSELayer", "RecurrentBlock"]
