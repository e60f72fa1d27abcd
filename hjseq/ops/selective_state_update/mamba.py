"""``backend="mamba"``: mamba-ssm's Triton ``selective_state_update``, where it is installed.

mamba-ssm updates the state in place; without ``inplace=True`` the state is cloned first.
Both layouts and ``state_batch_indices`` pass through. Only Mamba's ``scheme="euler_b"``
exists there; :func:`supports` declines ``"zoh"``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from .._registry import BackendUnavailable
from .ref import check_inputs


def supports(**kw: Any) -> str | None:
    """Reason this call cannot go to mamba-ssm, or None."""
    if kw.get("scheme", "euler_b") != "euler_b":
        return "mamba-ssm implements scheme='euler_b' only"
    return None


def load() -> Callable:
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except Exception as e:
        raise BackendUnavailable(f"mamba_ssm is not importable ({type(e).__name__}: {e}); "
                                 f"`pip install mamba-ssm` on a CUDA machine") from e

    def selective_state_update_mamba(state: Tensor, x: Tensor, dt: Tensor, A: Tensor,
                                     B: Tensor, C: Tensor, D: Tensor | None = None,
                                     z: Tensor | None = None, dt_bias: Tensor | None = None,
                                     dt_softplus: bool = False,
                                     scheme: str = "euler_b",
                                     state_batch_indices: Tensor | None = None,
                                     inplace: bool = False) -> tuple[Tensor, Tensor]:
        """hjseq's selective_state_update on top of mamba-ssm's (the state is cloned first
        unless ``inplace``)."""
        check_inputs(state, x, dt, A, B, C, D, z, dt_bias, scheme, state_batch_indices)
        reason = supports(scheme=scheme)
        if reason:
            raise BackendUnavailable(f"selective_state_update backend 'mamba': {reason}")
        new = state if inplace else state.clone()
        extra = {} if state_batch_indices is None else {
            "state_batch_indices": state_batch_indices}  # older mamba-ssm lacks the keyword
        out = selective_state_update(new, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                     dt_softplus=dt_softplus, **extra)
        return out, new

    return selective_state_update_mamba
