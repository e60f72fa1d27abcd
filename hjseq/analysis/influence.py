"""Attribution (influence) weights: which atoms or keys a prediction rests on.

For an LSE layer ``f_ε(x) = ε log Σ_j exp((W_j·x + b_j)/ε)`` with atoms ``(y_j, g_j)`` at
time t (``y_j = 2tW_j``, ``g_j = −b_j − t|W_j|²``), the Gibbs weights
``π_j(x) = softmax_j((W_j·x + b_j)/ε)`` cost O(N) per query and are at once

    ∂f/∂b_j = π_j,   ∂f/∂W_j = π_j x,   ∇_x f = E_π[W],
    ∇_x u_ε = (x − E_π[y])/(2t)   (u_ε = |x|²/(4t) − f_ε, the Hopf–Cole solution),

so ``E_π[y]`` is the foot of the (soft) characteristic through x and ``E_π[g]`` the soft
prediction of the initial data. For attention the same weights are ``softmax(q·k/ε)`` per
head (:meth:`hjseq.nn.HJAttention.attribution_weights`); :func:`attention_weights` collects
them for every ``HJAttention`` in a model.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hjseq.nn.attention import HJAttention
from hjseq.nn.lse import LSELayer


def _check_layer(layer: LSELayer) -> None:
    if not isinstance(layer, LSELayer):
        raise TypeError(f"layer must be a hjseq.nn.LSELayer, got {type(layer).__name__}")


def lse_weights(layer: LSELayer, x: Tensor) -> Tensor:
    """π ``(..., N)`` for x ``(..., d)``: ``softmax_j((W_j·x + b_j)/ε)``."""
    _check_layer(layer)
    return layer.attribution_weights(x)


def soft_prediction(layer: LSELayer, x: Tensor, t: float = 1.0) -> Tensor:
    """``E_π[g]`` ``(...)``: the atoms' initial data averaged with the attribution weights."""
    _, g = layer.atoms(t)
    return lse_weights(layer, x) @ g


def characteristic_foot(layer: LSELayer, x: Tensor, t: float = 1.0) -> Tensor:
    """``E_π[y]`` ``(..., d)``: where the soft characteristic through x starts
    (the soft proximal point ``x − 2t∇u_ε``)."""
    y, _ = layer.atoms(t)
    return lse_weights(layer, x) @ y


def hopf_cole_gradient(layer: LSELayer, x: Tensor, t: float = 1.0) -> Tensor:
    """``∇_x u_ε(x, t) = (x − E_π[y])/(2t)`` ``(..., d)``, u_ε the Hopf–Cole solution."""
    return (x - characteristic_foot(layer, x, t)) / (2 * t)


def bias_influence(layer: LSELayer, x: Tensor) -> Tensor:
    """``∂f/∂b_j = π_j`` ``(..., N)``: how much output moves per unit change of atom j's offset."""
    return lse_weights(layer, x)


def weight_influence(layer: LSELayer, x: Tensor) -> Tensor:
    """``∂f/∂W_j = π_j x`` ``(..., N, d)``."""
    return lse_weights(layer, x)[..., :, None] * x[..., None, :]


def top_influences(pi: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """The k largest weights and their atom/key indices along the last axis."""
    if not 1 <= k:
        raise ValueError(f"k must be >= 1, got {k}")
    return pi.topk(min(k, pi.shape[-1]), dim=-1)


def effective_atoms(pi: Tensor) -> Tensor:
    """``exp(H(π))`` ``(...)``: the number of atoms a prediction effectively rests on (1..N)."""
    logpi = torch.where(pi > 0, pi.log(), torch.zeros_like(pi))
    return torch.exp(-(pi * logpi).sum(-1))


class TrainingPointRegressor(nn.Module):
    """An LSE regressor whose atoms are the training inputs: the Gibbs readout
    ``f̂(x) = Σ_j π_j(x) z_j`` with ``π_j = softmax_j(−|x − x_j|²/(4tε))`` — an ``LSELayer``
    with ``W_j = x_j/(2t)``, ``b_j = −|x_j|²/(4t)`` (atoms ``(x_j, 0)``), read out on the
    targets z_j. Training-point influence is exact and O(n) per query:
    ``∂f̂/∂z_j = π_j(x)`` (and ``∂f/∂b_j = π_j`` for the underlying layer).

    X ``(n, d)`` training inputs, z ``(n,)`` targets; the kernel bandwidth is ``√(2tε)``.
    """

    def __init__(self, X: Tensor, z: Tensor, eps: float, t: float = 1.0) -> None:
        super().__init__()
        if X.dim() != 2:
            raise ValueError(f"X must have shape (n, d), got {tuple(X.shape)}")
        if z.shape != (X.shape[0],):
            raise ValueError(f"z must have shape (n,) = ({X.shape[0]},), got {tuple(z.shape)}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0 for a kernel readout, got {eps}")
        self.layer = LSELayer.from_atoms(X, torch.zeros_like(z), t=t, eps=eps)
        self.register_buffer("targets", z.clone())
        self.t = t

    def influence(self, x: Tensor) -> Tensor:
        """``∂f̂(x)/∂z_j = π_j(x)``: ``(..., n)``."""
        return self.layer.attribution_weights(x)

    def forward(self, x: Tensor) -> Tensor:
        """``f̂(x) = E_π[z]``: ``(..., d) → (...)``."""
        return self.influence(x) @ self.targets


def attention_weights(model: nn.Module, *inputs, **kwargs) -> dict[str, Tensor]:
    """Run ``model(*inputs, **kwargs)`` and return, for every ``HJAttention`` inside it, its
    attribution weights π ``(B, H, L, L)`` on the input it actually received, by module name."""
    captured: dict[str, tuple] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, HJAttention):
            def hook(m, args, kw, name=name):
                captured[name] = (args, kw)
            hooks.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    if not hooks:
        raise ValueError("model contains no HJAttention module")
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, (args, kw) in captured.items():
        mod = model.get_submodule(name) if name else model
        x = args[0]
        mask = kw.get("key_padding_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], Tensor) and args[1].dtype == torch.bool:
            mask = args[1]  # positional key_padding_mask (subclasses may use the slot otherwise)
        with torch.no_grad():
            out[name] = mod.attribution_weights(x, mask)
    return out


def attention_entropy(pi: Tensor) -> Tensor:
    """Entropy of each attention row ``(B, H, L)``; rows with no visible key give 0."""
    logpi = torch.where(pi > 0, pi.log(), torch.zeros_like(pi))
    return -(pi * logpi).sum(-1)


def max_entropy(n: int) -> float:
    """``log n``: the entropy of uniform weights over n atoms."""
    return math.log(n)
