"""Kernel ops. Each op lives in ``hjseq/ops/<op>/`` with ``ref.py`` (its executable
definition) beside its backends (``cpu.py``, ``triton.py``, ``cuda.py``, ``mamba.py``);
``backend="auto"`` picks the fastest available and never fails where ``"ref"`` works."""
from __future__ import annotations

from ._build import cpu_cache_bytes, empty_cpu_cache
from ._registry import BackendUnavailable, available, resolve
from .causal_conv1d import causal_conv1d
from .linear_scan import linear_scan
from .mamba3_siso import mamba3_siso, mamba3_siso_step
from .recurrent_scan import recurrent_scan
from .selective_scan import selective_scan
from .selective_state_update import selective_state_update
from .ssd import ssd, ssd_scan

__all__ = ["selective_scan", "ssd", "ssd_scan", "mamba3_siso", "mamba3_siso_step", "selective_state_update", "linear_scan", "causal_conv1d", "recurrent_scan", "available", "resolve",
           "BackendUnavailable", "cpu_cache_bytes", "empty_cpu_cache"]
