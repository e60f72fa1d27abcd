"""Backpropagation as the discrete co-state (Pontryagin), written out explicitly.

For a discrete flow ``s_{k+1} = Φ_k(s_k)``, k = 0..L−1, and a loss L(s_0, ..., s_L) with
partial derivatives ``∂L/∂s_k``, the co-state

    p_L = ∂L/∂s_L,        p_k = (∂Φ_k/∂s_k)ᵀ p_{k+1} + ∂L/∂s_k

is the total derivative dL/ds_k. For Euler ``Φ(s) = s + Δ F(s)`` the transpose Jacobian is
``(I + Δ ∂F/∂s)ᵀ``: the discretized adjoint equation ``ṗ = −(∂F/∂s)ᵀ p``. This module runs
the recursion one vector–Jacobian product of one step at a time (no graph over the whole
sequence), so it can be held against autograd.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

StepMap = Callable[[int, Tensor], Tensor]  # (k, s_k (B, S)) -> s_{k+1} (B, S)


def costate_recursion(step: StepMap, states: Tensor, dloss_dstates: Tensor) -> Tensor:
    """Explicit backward co-state recursion for ``s_{k+1} = step(k, s_k)``.

    states: (B, L+1, S) the forward trajectory (``states[:, k+1] == step(k, states[:, k])``);
    dloss_dstates: (B, L+1, S) the partial derivatives ∂L/∂s_k. Returns p: (B, L+1, S), the
    total derivatives dL/ds_k (p[:, 0] is the gradient w.r.t. the initial state)."""
    if states.dim() != 3 or dloss_dstates.shape != states.shape:
        raise ValueError(f"states and dloss_dstates must both be (B, L+1, S), got "
                         f"{tuple(states.shape)} and {tuple(dloss_dstates.shape)}")
    L = states.shape[1] - 1
    p = dloss_dstates[:, L]
    out = [p]
    for k in range(L - 1, -1, -1):
        with torch.enable_grad():
            s = states[:, k].detach().requires_grad_(True)
            (vjp,) = torch.autograd.grad(step(k, s), s, grad_outputs=p)
        p = vjp + dloss_dstates[:, k]
        out.append(p)
    return torch.stack(out[::-1], 1)


class _FlatState:
    """Flattens a block state (a tensor or a tuple of tensors, each (B, ·)) to (B, S)."""

    def __init__(self, state: Any):
        self.parts = state if isinstance(state, tuple) else (state,)
        self.tuple = isinstance(state, tuple)
        self.shapes = [p.shape[1:] for p in self.parts]
        self.sizes = [p[0].numel() for p in self.parts]

    def flat(self, state: Any) -> Tensor:
        parts = state if isinstance(state, tuple) else (state,)
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)

    def unflat(self, s: Tensor) -> Any:
        parts = tuple(c.reshape(s.shape[0], *shape)
                      for c, shape in zip(s.split(self.sizes, 1), self.shapes))
        return parts if self.tuple else parts[0]


def block_states(block: Any, x: Tensor, initial_state: Any = None) -> tuple[Tensor, StepMap]:
    """The block's full recurrent state at every token boundary, flattened: (B, L+1, S)
    (tuple states such as the LSTM's (h, c) concatenated in order), and the one-step map
    ``(k, s) -> s'`` of ``block.step`` on that flat layout."""
    if x.dim() != 3:
        raise ValueError(f"x must be (B, L, I), got shape {tuple(x.shape)}")
    state = block.zero_state(x) if initial_state is None else initial_state
    layout = _FlatState(state)

    def step(k: int, s: Tensor) -> Tensor:
        _, nxt = block.step(x[:, k], layout.unflat(s))
        return layout.flat(nxt)

    s = layout.flat(state)
    traj = [s]
    with torch.no_grad():
        for k in range(x.shape[1]):
            s = step(k, s)
            traj.append(s)
    return torch.stack(traj, 1), step


def flow_indices(block: Any, x: Tensor, initial_state: Any = None) -> Tensor:
    """Positions of the block's flow state (``block.flow_state``, the part the HJ flow moves:
    the LSTM's c, Mamba's SSM state) inside the flat full state of :func:`block_states`:
    a LongTensor (F,)."""
    state = block.zero_state(x) if initial_state is None else initial_state
    layout = _FlatState(state)
    S = sum(layout.sizes)
    idx = torch.arange(S, dtype=torch.float64, device=x.device).expand(x.shape[0], S)
    return block.flow_state(layout.unflat(idx))[0].reshape(-1).round().long()


def costate(block: Any, x: Tensor, dloss_dstates: Tensor, initial_state: Any = None) -> Tensor:
    """Co-state of a recurrent block on x (B, L, I): the explicit recursion over the VJPs of
    ``block.step`` (the block's one-token map on its full state, see :func:`block_states`).

    dloss_dstates: (B, L+1, S) partial derivatives of the loss w.r.t. the flattened states;
    returns (B, L+1, S), equal to autograd's total derivatives w.r.t. those states."""
    states, step = block_states(block, x, initial_state)
    if dloss_dstates.shape != states.shape:
        raise ValueError(f"dloss_dstates must be (B, L+1, S) = {tuple(states.shape)} (the "
                         f"flattened states of {type(block).__name__}), got "
                         f"{tuple(dloss_dstates.shape)}")
    return costate_recursion(step, states, dloss_dstates)
