"""Op-test fixtures.

NaN-filled ``torch.empty``/``torch.empty_like`` (the flash-linear-attention trick): while an
op test runs, every hjseq module that refers to ``torch`` sees a proxy whose ``empty`` and
``empty_like`` return NaN-filled floating tensors, so a kernel or wrapper that reads memory
it never wrote produces NaN and fails ``assert_close``. Only the ``torch`` name inside hjseq
modules is replaced (torch itself, and the tests, are untouched), so torch internals cannot
break. Tests that run ``torch.compile`` opt out with ``@pytest.mark.no_nan_fill`` (dynamo
must see the real torch module).
"""
from __future__ import annotations

import importlib
import math
import sys
import types

import pytest
import torch

_REAL_EMPTY, _REAL_EMPTY_LIKE = torch.empty, torch.empty_like


def _nan_fill(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() or t.is_complex():
        with torch.no_grad():
            t.fill_(math.nan)
    return t


class _NaNTorch(types.ModuleType):
    """``torch`` with NaN-filled ``empty``/``empty_like``; everything else forwards."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs) -> torch.Tensor:
        return _nan_fill(_REAL_EMPTY(*args, **kwargs))

    @staticmethod
    def empty_like(*args, **kwargs) -> torch.Tensor:
        return _nan_fill(_REAL_EMPTY_LIKE(*args, **kwargs))


NAN_TORCH = _NaNTorch()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_nan_fill: run without NaN-filled torch.empty")


def _import_backends() -> None:
    """Import every registered backend module so its ``torch`` name can be patched."""
    import hjseq.ops  # noqa: F401  (registers the ops)
    import hjseq.ops.recurrent_scan  # noqa: F401
    from hjseq.ops._registry import _BACKENDS

    for table in _BACKENDS.values():
        for b in table.values():
            try:
                importlib.import_module(b.module)
            except Exception:  # a backend that cannot import is simply not patched
                pass


@pytest.fixture(autouse=True)
def nan_filled_empty(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    if request.node.get_closest_marker("no_nan_fill"):
        yield
        return
    _import_backends()
    for name, mod in list(sys.modules.items()):
        if (name == "hjseq" or name.startswith("hjseq.")) and getattr(mod, "torch", None) is torch:
            monkeypatch.setattr(mod, "torch", NAN_TORCH)
    yield
