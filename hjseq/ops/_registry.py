"""Backend registry shared by every kernel op.

Each op (``hjseq/ops/<op>/``) declares its backends once, by module path::

    register("selective_scan", "cpu", "hjseq.ops.selective_scan.cpu", devices=("cpu",))

A backend module defines ``load() -> Callable`` returning the implementation (same
signature as the op, without ``backend``) or raising :class:`BackendUnavailable` with a
reason. Modules are imported lazily, on first use, and the outcome is cached.

``resolve(op, backend, device, **features)`` returns ``(name, fn)``. ``backend="auto"``
walks the op's backends in priority order for the device, skips those that cannot load
or that decline the call's features (``supports(**features) -> str | None`` in the
backend module returns a reason to decline), and ends at ``"ref"``, which always works.
An explicitly named backend that cannot run raises, naming the reason: no silent fallback.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


class BackendUnavailable(RuntimeError):
    """Raised by a backend's ``load()`` (or ``resolve``) when it cannot run here."""


@dataclass
class Backend:
    op: str
    name: str
    module: str
    devices: tuple[str, ...]
    _fn: Callable | None = field(default=None, repr=False)
    _error: str | None = field(default=None, repr=False)
    _loaded: bool = field(default=False, repr=False)

    def load(self) -> Callable:
        if not self._loaded:
            self._loaded = True
            try:
                mod = importlib.import_module(self.module)
                self._fn = mod.load()
            except BackendUnavailable as e:
                self._error = str(e)
            except ModuleNotFoundError as e:
                self._error = f"module {e.name!r} not found"
            except Exception as e:  # a broken backend must not break "auto"
                self._error = f"{type(e).__name__}: {e}"
        if self._fn is None:
            raise BackendUnavailable(f"{self.op} backend {self.name!r} unavailable: {self._error}")
        return self._fn

    def declines(self, **features: Any) -> str | None:
        mod = importlib.import_module(self.module)
        supports = getattr(mod, "supports", None)
        return supports(**features) if supports is not None else None


_BACKENDS: dict[str, dict[str, Backend]] = {}

# "auto" order per device type; "ref" is always last and always works.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "ref"),
    "cuda": ("cuda", "mamba", "triton", "ref"),
}


_OP_AUTO_ORDER: dict[str, dict[str, tuple[str, ...]]] = {}


def register(op: str, name: str, module: str, devices: tuple[str, ...]) -> None:
    _BACKENDS.setdefault(op, {})[name] = Backend(op, name, module, tuple(devices))


def set_auto_order(op: str, device: str, order: tuple[str, ...]) -> None:
    """Override the "auto" order of one op on one device type (``"ref"`` stays the last resort)."""
    _OP_AUTO_ORDER.setdefault(op, {})[device] = tuple(order)


def backends(op: str) -> dict[str, Backend]:
    return _BACKENDS[op]


def available(op: str, device: str = "cpu") -> dict[str, str | None]:
    """``{backend: None if usable on ``device`` else the reason}`` for an op."""
    out: dict[str, str | None] = {}
    for name, b in _BACKENDS[op].items():
        if device not in b.devices and name != "ref":
            out[name] = f"not built for device {device!r}"
            continue
        try:
            b.load()
            out[name] = None
        except BackendUnavailable as e:
            out[name] = str(e)
    return out


def resolve(op: str, backend: str, device: str, **features: Any) -> tuple[str, Callable]:
    table = _BACKENDS[op]
    if backend != "auto":
        if backend not in table:
            raise ValueError(f"{op}: backend={backend!r} is not one of {['auto', *table]}")
        b = table[backend]
        if device not in b.devices and backend != "ref":
            raise BackendUnavailable(
                f"{op}: backend={backend!r} runs on {b.devices}, but the tensors are on {device!r}; "
                f"move them or use backend='auto'")
        fn = b.load()
        reason = b.declines(**features)
        if reason:
            raise BackendUnavailable(f"{op}: backend={backend!r} does not support this call: {reason}")
        return backend, fn
    order = _OP_AUTO_ORDER.get(op, {}).get(device) or AUTO_ORDER.get(device, ("ref",))
    for name in order:
        b = table.get(name)
        if b is None or (device not in b.devices and name != "ref"):
            continue
        try:
            fn = b.load()
        except BackendUnavailable:
            continue
        if name != "ref" and b.declines(**features):
            continue
        return name, fn
    return "ref", table["ref"].load()
