"""The block kinds an ``HJLM`` config can name: one registry, filled in one place.

A kind maps a name to a module class, the options a config may give it (name -> (accepted
types, description)), and how to build it for a model of width ``d_model``. hjseq's own
kinds are registered in :mod:`hjseq.catalog` at ``import hjseq``; a user registers theirs
with :func:`register_block`, or names a class directly in a config as
``kind = "package.module:ClassName"``.

How a class is built when no ``build`` is given (read off its ``__init__``):

- it takes ``d_model``: ``cls(d_model=d_model, **options)`` (a mixer: d_model -> d_model);
- it takes ``input_size`` and ``hidden_size`` (a recurrent cell such as ``HJGRU``):
  ``cls(d_model, hidden_size, **options)`` (``hidden_size`` defaults to d_model) followed by
  a linear map back to d_model.

Options not given explicitly are read off the same signature: every keyword parameter
with a default of type bool, int, float or str (or None: any of those) is an option.
A mixer follows the recurrent-block protocol: ``forward(x, initial_state=None,
return_final_state=False)`` on (B, L, d_model) and ``step(x_t, state) -> (y_t, state)``.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

OptionSchema = dict[str, tuple[tuple[type, ...], str]]
Builder = Callable[[int, dict[str, Any]], nn.Module]


class KindError(ValueError):
    """A block kind that cannot be registered, resolved or built; the message says why."""


@dataclass
class BlockKind:
    """One registered kind: ``name``, ``cls``, its config ``options`` and ``build``."""

    name: str
    cls: type
    options: OptionSchema
    build: Builder


_KINDS: dict[str, BlockKind] = {}
_ALIASES: dict[str, str] = {}


def _signature(cls: type) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return {}


def options_from_signature(cls: type, skip: tuple[str, ...] = ()) -> OptionSchema:
    """Options read off ``cls.__init__``: keyword parameters with a bool/int/float/str/None
    default (ints are accepted where a float is the default; None accepts any scalar)."""
    out: OptionSchema = {}
    scalar = (bool, int, float, str)
    for name, p in _signature(cls).items():
        if name in ("self", *skip) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            continue
        d = p.default
        if d is None:
            types: tuple[type, ...] = (*scalar, type(None))
        elif isinstance(d, bool):
            types = (bool,)
        elif isinstance(d, float):
            types = (float,)
        elif isinstance(d, (int, str)):
            types = (type(d),)
        else:
            continue
        out[name] = (types, f"{cls.__name__} argument {name} (default {d!r})")
    return out


def _default_build(cls: type) -> tuple[Builder, tuple[str, ...]]:
    params = _signature(cls)
    if "d_model" in params:
        return (lambda d_model, o: cls(d_model=d_model, **o)), ("d_model",)
    if "input_size" in params and "hidden_size" in params:
        def build(d_model: int, o: dict[str, Any]) -> nn.Module:
            from hjseq.models.lm import RecurrentMixer

            o = dict(o)
            hidden = o.pop("hidden_size", d_model)
            cell = cls(d_model, hidden, **o)
            return RecurrentMixer(cell, getattr(cell, "output_size", hidden), d_model)

        return build, ("input_size",)
    raise KindError(f"cannot tell how to build {cls.__qualname__}: its __init__ must take "
                    "d_model (a d_model -> d_model mixer) or input_size and hidden_size (a "
                    "recurrent cell), or pass build=(d_model, options) -> module")


def _default_options(cls: type, skip: tuple[str, ...]) -> OptionSchema:
    out = options_from_signature(cls, skip)
    if skip == ("input_size",):  # a recurrent cell: its width is an option (default d_model)
        out.setdefault("hidden_size", ((int,), "state size (default d_model); projected back "
                                              "to d_model"))
    return out


def _check_class(cls: Any, where: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise KindError(f"{where}: {cls!r} is not an nn.Module class")
    for method in ("forward", "step"):
        if not callable(getattr(cls, method, None)):
            raise KindError(f"{where}: {cls.__qualname__} has no {method}(); a block needs "
                            "forward(x, initial_state=None, return_final_state=False) and "
                            "step(x_t, state) -> (y_t, state) (hjseq.nn.RecurrentBlock has both)")


def register_block(kind: str, cls: type, options: OptionSchema | None = None,
                   build: Builder | None = None, aliases: tuple[str, ...] = ()) -> BlockKind:
    """Let configs name ``cls`` as ``kind``. ``options``: accepted config options (default:
    read off ``cls.__init__``); ``build(d_model, options) -> module`` (default: see the
    module docstring). Registering a name again replaces it. Returns the :class:`BlockKind`."""
    if not isinstance(kind, str) or not kind or ":" in kind:
        raise KindError(f"register_block: kind must be a non-empty name without ':', got {kind!r}")
    _check_class(cls, f"register_block({kind!r})")
    skip: tuple[str, ...] = ()
    if build is None:
        build, skip = _default_build(cls)
    entry = BlockKind(kind, cls, dict(options) if options is not None
                      else _default_options(cls, skip), build)
    _KINDS[kind] = entry
    for alias in aliases:
        _ALIASES[alias] = kind
    return entry


def _import_class(spec: str) -> type:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise KindError(f"kind {spec!r}: write it as 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name.split(".")[0]):
            raise
        # the console script's sys.path lacks the working directory; configs naming a
        # module of the user's project (examples.mingru, say) are found from there too
        cwd = os.getcwd()
        if cwd in sys.path:
            raise KindError(f"kind {spec!r}: cannot import module {module_name!r} ({e})") from None
        sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e2:
            raise KindError(f"kind {spec!r}: cannot import module {module_name!r} ({e2}); "
                            "install it or run from the directory that holds it") from None
        finally:
            sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise KindError(f"kind {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def get_kind(kind: str) -> BlockKind:
    """The registered kind (aliases resolved), or the class named by ``"module:Class"``
    (registered under that string on first use)."""
    if not isinstance(kind, str):
        raise KindError(f"block kind must be a string, got {type(kind).__name__}")
    name = _ALIASES.get(kind, kind)
    if name in _KINDS:
        return _KINDS[name]
    if ":" in kind:
        cls = _import_class(kind)
        _check_class(cls, f"kind {kind!r}")
        build, skip = _default_build(cls)
        entry = BlockKind(kind, cls, _default_options(cls, skip), build)
        _KINDS[kind] = entry
        return entry
    raise KindError(f"unknown block kind {kind!r}; one of {', '.join(known_kinds())}, or "
                    "'package.module:ClassName' (see hjseq.models.register_block)")


def canonical_kind(kind: str) -> str:
    """The registered name of ``kind`` (aliases resolved)."""
    return _ALIASES.get(kind, kind)


def known_kinds() -> list[str]:
    """Registered kind names and aliases, sorted (``module:Class`` kinds excluded)."""
    return sorted([k for k in _KINDS if ":" not in k] + list(_ALIASES))


__all__ = ["BlockKind", "KindError", "register_block", "get_kind", "known_kinds",
           "canonical_kind", "options_from_signature"]
