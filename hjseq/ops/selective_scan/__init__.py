"""``selective_scan``: dispatch to a backend (see hjseq/ops/_registry.py). Definition: ref.py."""
from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import Tensor

from .._registry import (_OP_AUTO_ORDER, AUTO_ORDER, BackendUnavailable, backends, register,
                         resolve)
from .checks import validate

OP = "selective_scan"
register(OP, "ref", "hjseq.ops.selective_scan.ref", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.selective_scan.cpu", devices=("cpu",))
register(OP, "triton", "hjseq.ops.selective_scan.triton", devices=("cuda", "cpu"))
register(OP, "cuda", "hjseq.ops.selective_scan.cuda", devices=("cuda",))
register(OP, "mamba", "hjseq.ops.selective_scan.mamba", devices=("cuda",))


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   initial_state: Tensor | None = None, return_final_state: bool = False,
                   scheme: str = "euler_b", cu_seqlens: Tensor | None = None,
                   backend: str = "auto"):
    """Selective scan ``h_t = Ā_t h_{t−1} + B̄_t u_t``, ``y_t = C_t·h_t + D u_t``, gated by
    ``silu(z)``; see ref.py for the full definition, layouts and schemes.

    Returns ``y`` (B, D, L), or ``(y, final_state)`` with ``return_final_state``.
    Arguments are validated first (checks.py): a bad rank, shape, dtype, device, group
    count or ``cu_seqlens`` raises an error naming the argument and the expected layout.
    """
    validate(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state,
             scheme=scheme, cu_seqlens=cu_seqlens)
    kwargs = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                  delta_softplus=delta_softplus, initial_state=initial_state,
                  return_final_state=return_final_state, scheme=scheme, cu_seqlens=cu_seqlens)
    if torch.compiler.is_compiling():
        fn = _resolve_traced(backend, u.device.type, kwargs)
    else:
        _, fn = resolve(OP, backend, u.device.type, **kwargs)
    return fn(**kwargs)


# --- dispatch under torch.compile -------------------------------------------------------
# The registry imports backend modules (importlib), which dynamo cannot trace. While
# tracing, the loading runs eagerly inside an assume_constant_result function (its result,
# the names that loaded, is a trace-time constant); the choice itself is then plain Python
# over already-imported modules, including each backend's ``supports`` on the call's tensors.
_MODULES: dict[str, object] = {}


@torch.compiler.assume_constant_result
def _load_backends(device: str) -> str:
    loaded = []
    for name, b in backends(OP).items():
        if device not in b.devices and name != "ref":
            continue
        try:
            b.load()
        except BackendUnavailable:
            continue
        _MODULES[name] = importlib.import_module(b.module)
        loaded.append(name)
    return ",".join(loaded)


def _resolve_traced(backend: str, device: str, kwargs: dict) -> Callable:
    loaded = _load_backends(device).split(",")
    auto = _OP_AUTO_ORDER.get(OP, {}).get(device) or AUTO_ORDER.get(device, ())
    order = [backend] if backend != "auto" else [*auto, "ref"]
    for name in order:
        if name not in loaded:
            if backend != "auto":
                raise BackendUnavailable(f"{OP}: backend={backend!r} unavailable on {device!r}")
            continue
        supports = getattr(_MODULES[name], "supports", None)
        reason = supports(**kwargs) if supports is not None and name != "ref" else None
        if reason:
            if backend != "auto":
                raise BackendUnavailable(f"{OP}: backend={backend!r} does not support this "
                                         f"call: {reason}")
            continue
        return backends(OP)[name].load()
    return backends(OP)["ref"].load()
