"""Call an op through the registry in a way ``torch.compile(fullgraph=True)`` can trace.

``resolve`` imports backend modules (``importlib``), which dynamo refuses to trace. Eagerly,
``dispatch`` simply calls ``resolve``. While compiling, the backend is chosen once at trace
time by ``_resolve_name`` (``assume_constant_result``: run eagerly, the name baked into the
graph) from the call's features: None, bools and strings as they are; numbers as the string
``SYMBOLIC`` (dynamo may trace them symbolically); tensors as size-1 meta tensors of the
same dtype and rank (presence is what the shipped ``supports()`` functions look at). So
under compile, recurrent_scan's "native" backend declines (dt unknown) and "cpu" runs,
which is exact for every dt. The chosen backend callable itself is then traced (the C++
backends are custom ops: single graph nodes with fake kernels and autograd).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ._registry import backends, resolve


SYMBOLIC = "__symbolic__"  # what supports() sees for a number dynamo traces symbolically


def _describe(v: Any) -> Any:
    if isinstance(v, Tensor):
        return ("__tensor__", v.dtype, v.dim())
    if v is None or isinstance(v, (bool, str)):
        return v
    # numbers may be symbolic (dynamo makes a changed float dynamic), so supports() is told
    # they are unknown; e.g. recurrent_scan's "native" then declines and "cpu" runs, which
    # is exact for every dt.
    return SYMBOLIC


def _undescribe(v: Any) -> Any:
    if isinstance(v, tuple) and len(v) == 3 and v[0] == "__tensor__":
        return torch.empty((1,) * v[2], dtype=v[1], device="meta")
    return v


@torch._dynamo.assume_constant_result
def _resolve_name(op: str, backend: str, device: str, features: tuple) -> str:
    return resolve(op, backend, device, **{k: _undescribe(v) for k, v in features})[0]


def dispatch(op: str, backend: str, device: str, kwargs: dict[str, Any]) -> Any:
    """Resolve ``op``'s backend for these arguments and call it with ``kwargs``."""
    if torch.compiler.is_compiling():
        features = tuple((k, _describe(v)) for k, v in kwargs.items())
        name = _resolve_name(op, backend, device, features)
        fn: Callable = backends(op)[name].load()  # loaded at resolve time: no import here
    else:
        _, fn = resolve(op, backend, device, **kwargs)
    return fn(**kwargs)
