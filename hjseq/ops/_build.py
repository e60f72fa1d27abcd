"""Build and cache the C++/CUDA extensions in ``csrc/`` through torch's cpp_extension.

``load_extension(name, sources)`` compiles once per (sources, flags, torch version, CPU)
into ``$HJSEQ_BUILD_DIR`` (default ``~/.cache/hjseq/extensions``) and returns the module.
If compilation is impossible (no compiler, no sources, ``HJSEQ_NO_BUILD=1``) it raises
:class:`~hjseq.ops._registry.BackendUnavailable` and warns once, so "auto" falls back to
the reference path with a visible :class:`ExtensionBuildWarning`.

A compilation prints one line on stderr when it starts and one when it ends, with its time
(a load of a built library that takes over ``SLOW_LOAD_S``, because ninja rebuilds or another
process holds the build lock, says so too); :func:`build_seconds` is the total so far, so
callers timing their own work (the training loop's tokens/s and ETA) can leave it out.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from ._registry import BackendUnavailable


class ExtensionBuildWarning(UserWarning):
    """The fused C++/CUDA kernels could not be built; the reference path is used."""


_CACHE: dict[str, ModuleType] = {}
_FAILED: dict[str, str] = {}
_BUILD_SECONDS = [0.0]  # wall time spent compiling or loading extensions in this process
SLOW_LOAD_S = 2.0  # a load of a built extension taking longer than this is announced


def build_seconds() -> float:
    """Wall seconds this process has spent in :func:`load_extension` compiling or loading
    extensions (a cached load takes milliseconds)."""
    return _BUILD_SECONDS[0]


def cpu_cache_bytes() -> int:
    """Bytes of freed CPU blocks that the loaded extensions keep for reuse (their
    ``BlockCache``, ``csrc/cpu/block_cache.h``: at most ``$HJSEQ_CPU_CACHE_MB`` each, by
    default 1/8 of physical memory up to 4 GiB; ``HJSEQ_CPU_CACHE_MB=0`` keeps none)."""
    return sum(m.cached_bytes() for m in _CACHE.values() if hasattr(m, "cached_bytes"))


def empty_cpu_cache() -> int:
    """Give the loaded extensions' cached CPU blocks back to the OS; returns the bytes freed.
    Blocks still in use by live tensors are not touched."""
    freed = cpu_cache_bytes()
    for m in _CACHE.values():
        if hasattr(m, "release_cached"):
            m.release_cached()
    return freed


def _say(text: str) -> None:
    sys.stderr.write(f"hjseq: {text}\n")
    sys.stderr.flush()

DEFAULT_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]
DEFAULT_LDFLAGS = ["-fopenmp"]


def csrc_dir() -> Path:
    """The ``csrc/`` tree: next to the package (editable install / source checkout)."""
    here = Path(__file__).resolve().parent.parent  # hjseq/
    for cand in (here / "csrc", here.parent / "csrc"):
        if cand.is_dir():
            return cand
    raise BackendUnavailable(
        "csrc/ sources not found next to the hjseq package; install from a source checkout "
        "with `pip install -e .` to get the fused kernels")


def build_root() -> Path:
    return Path(os.environ.get("HJSEQ_BUILD_DIR", Path.home() / ".cache" / "hjseq" / "extensions"))


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


STALE_LOCK_S = 1200.0
"""A build lock older than this is left by a killed process (no build takes 20 minutes):
torch's loader would wait on it forever, so it is removed with a message."""


def _clear_stale_lock(lock: Path) -> None:
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        _say(f"removing a stale build lock ({age / 60:.0f} min old, left by a killed build): "
             f"{lock}")
        lock.unlink(missing_ok=True)


def load_extension(name: str, sources: list[str], extra_cflags: list[str] | None = None,
                   extra_cuda_cflags: list[str] | None = None,
                   extra_ldflags: list[str] | None = None, verbose: bool = False) -> ModuleType:
    """Compile (or reuse) the extension ``hjseq_<name>`` from ``sources`` (paths under csrc/)."""
    if name in _CACHE:
        return _CACHE[name]
    if name in _FAILED:
        raise BackendUnavailable(_FAILED[name])
    if os.environ.get("HJSEQ_NO_BUILD", "") not in ("", "0"):
        raise BackendUnavailable("HJSEQ_NO_BUILD is set: fused kernels disabled")
    try:
        root = csrc_dir()
        paths = [root / s for s in sources]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise BackendUnavailable(f"missing sources {missing}")
        cflags = list(DEFAULT_CFLAGS if extra_cflags is None else extra_cflags)
        ldflags = list(DEFAULT_LDFLAGS if extra_ldflags is None else extra_ldflags)
        h = hashlib.sha256()
        headers = sorted({h for p in paths for h in p.parent.glob("*.h")})  # beside the sources
        for p in sorted(paths) + headers:
            h.update(p.read_bytes())
        h.update(repr((cflags, ldflags, extra_cuda_cflags, torch.__version__,
                       _cpu_signature())).encode())
        build_dir = build_root() / f"{name}-{h.hexdigest()[:16]}"
        build_dir.mkdir(parents=True, exist_ok=True)
        _clear_stale_lock(build_dir / "lock")
        from torch.utils import cpp_extension

        t0 = time.perf_counter()
        said = threading.Event()  # a start line was printed, so an end line follows

        def announce(text: str) -> None:
            said.set()
            _say(text)

        # no library yet: a compilation, announced now; otherwise a cached load, announced
        # only if it turns out slow (ninja rebuilding, or waiting on another process's build)
        slow = threading.Timer(SLOW_LOAD_S, announce, (
            f"loading the C++ kernel hjseq_{name} is slow: rebuilding it, or waiting for "
            f"another process's build ({build_dir})",))
        if not (build_dir / f"hjseq_{name}.so").is_file():
            announce(f"building the C++ kernel hjseq_{name} (first use only; cached in "
                     f"{build_dir})")
        else:
            slow.daemon = True
            slow.start()
        mod = None
        try:
            mod = cpp_extension.load(
                name=f"hjseq_{name}", sources=[str(p) for p in paths], extra_cflags=cflags,
                extra_cuda_cflags=extra_cuda_cflags, extra_ldflags=ldflags,
                extra_include_paths=[str(root)], build_directory=str(build_dir),
                verbose=verbose)
        finally:
            slow.cancel()
            took = time.perf_counter() - t0
            _BUILD_SECONDS[0] += took
            if said.is_set():
                _say(f"{'built' if mod is not None else 'failed to build'} hjseq_{name} in "
                     f"{took:.1f} s")
    except BackendUnavailable as e:
        _FAILED[name] = str(e)
        raise
    except Exception as e:  # compiler missing, compile error, ninja missing...
        msg = f"could not build extension hjseq_{name}: {type(e).__name__}: {str(e)[-2000:]}"
        _FAILED[name] = msg
        warnings.warn(msg + " -- falling back to the reference implementation",
                      ExtensionBuildWarning, stacklevel=2)
        raise BackendUnavailable(msg) from e
    _CACHE[name] = mod
    return mod
