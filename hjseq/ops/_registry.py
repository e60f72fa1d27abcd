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

On devices in ``MEASURED_AUTO_DEVICES`` (CUDA by default; ``set_measured_auto``), "auto"
picks the fastest *measured* backend instead of the first in the order: the first call per
(op, device, dtypes, shapes rounded up to powers of two, flags) times every eligible
backend's forward on the call's own arguments (median of 3 after a warm-up, without
autograd) and caches the winner (``measured_choices()``). Under tracing (meta tensors),
or with one eligible backend, the static order decides.
"""
from __future__ import annotations

import importlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


BACKEND_NAMES: tuple[str, ...] = ("ref", "native", "cpu", "triton", "cuda", "mamba")
"""Every backend name an op may register: the one vocabulary of backends. ``"auto"`` picks
among them; blocks add the engine's ``"loop"`` (``hjseq.engine.BLOCK_BACKENDS``)."""


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
    if name not in BACKEND_NAMES:
        raise ValueError(f"register({op!r}): backend name must be one of {BACKEND_NAMES}, "
                         f"got {name!r}")
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


MEASURED_AUTO_DEVICES: set[str] = {"cuda"}
_MEASURED: dict[tuple, str] = {}


def set_measured_auto(devices: tuple[str, ...] | set[str]) -> None:
    """Choose the device types on which "auto" times the eligible backends (see module doc)."""
    MEASURED_AUTO_DEVICES.clear()
    MEASURED_AUTO_DEVICES.update(devices)
    _MEASURED.clear()


def measured_choices() -> dict[tuple, str]:
    """The cache of measured "auto" choices: ``{(op, device, call signature): backend}``."""
    return dict(_MEASURED)


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _call_signature(features: dict[str, Any]) -> tuple | None:
    sig = []
    for k, v in sorted(features.items()):
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            if getattr(v, "is_meta", False):
                return None  # tracing: nothing to time
            sig.append((k, str(v.dtype), tuple(_pow2(d) for d in v.shape)))
        else:
            sig.append((k, v if isinstance(v, (bool, str, int, float, type(None))) else type(v).__name__))
    return tuple(sig)


def _time_call(fn: Callable, features: dict[str, Any], device: str) -> float:
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        fn(**features)  # warm-up (compiles / autotunes Triton kernels)
        times = []
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            fn(**features)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measured_pick(op: str, device: str, candidates: list[tuple[str, Callable]],
                   features: dict[str, Any]) -> tuple[str, Callable] | None:
    sig = _call_signature(features)
    if sig is None:
        return None
    key = (op, device, sig)
    if key not in _MEASURED:
        timings = {}
        for name, fn in candidates:
            try:
                timings[name] = _time_call(fn, features, device)
            except Exception:  # a backend that fails on this call is not a candidate
                continue
        if not timings:
            return None
        _MEASURED[key] = min(timings, key=timings.get)
    chosen = _MEASURED[key]
    return next(((n, f) for n, f in candidates if n == chosen), None)


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
    measure = device in MEASURED_AUTO_DEVICES
    candidates: list[tuple[str, Callable]] = []
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
        if not measure:
            return name, fn
        candidates.append((name, fn))
    fused = [c for c in candidates if c[0] != "ref"]  # the Python reference is never faster
    if len(fused) > 1:
        picked = _measured_pick(op, device, fused, features)
        if picked is not None:
            return picked
    if fused:
        return fused[0]
    return "ref", table["ref"].load()
