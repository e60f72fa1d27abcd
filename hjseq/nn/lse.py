"""The log-sum-exp layer as the exact Hopf–Cole solution of ``u_t + |∇u|² = ε Δu``.

    f_ε(x) = ε log Σ_j exp((W_j·x + b_j)/ε),           j = 1..N atoms

With atoms ``y_j = 2t W_j``, ``g_j = −b_j − t|W_j|²`` (the inverse of the map
``W_j = y_j/(2t)``, ``b_j = −g_j − |y_j|²/(4t)``) the layer satisfies, for every t > 0,

    f_ε(x) + u_ε(x, t) = |x|²/(4t),   u_ε = −ε log Σ_j exp(−(g_j + |x − y_j|²/(4t))/ε),

so a forward pass evaluates the viscous HJ solution at x. ``eps`` is at once the softmax
temperature and the viscosity; ``eps = 0`` is the tropical (max-plus) layer
``max_j (W_j·x + b_j)``, i.e. the Hopf–Lax formula. N = 2 with one zero atom is softplus.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hjseq import hopf
from hjseq.viscosity import check_viscosity


def check_eps(eps: float, name: str = "eps") -> float:
    """A scalar viscosity/temperature ε ≥ 0 (0 = the tropical/hard limit), as a float;
    validated by the one viscosity check (:func:`hjseq.viscosity.check_viscosity`)."""
    if isinstance(eps, Tensor):
        if eps.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(eps.shape)}")
        eps = float(eps)
    return float(check_viscosity(eps, name))


def check_finite(x: Tensor, name: str) -> None:
    """Raise a ValueError naming ``name`` when ``x`` holds NaN."""
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN; clean the input (e.g. torch.nan_to_num) before the call")


def _quadratic_spec(eps: float):
    """The block's HJ spec: H = |p|², viscosity ε, exact Hopf–Cole scheme."""
    from hjseq.hamiltonians import Quadratic  # core module; imported lazily
    from hjseq.spec import HJSpec

    return HJSpec(hamiltonian=Quadratic(), viscosity=eps, scheme="hopf_cole")


class LSELayer(nn.Module):
    """``f_ε(x) = ε·logsumexp((W x + b)/ε)``: the discrete Hopf–Cole solution, read as a layer.

    Args:
        in_features: d, the input dimension.
        n_atoms: N, the number of affine pieces (atoms of the initial data).
        eps: viscosity ε ≥ 0; 0 gives the exact ``max_j`` (tropical limit).

    Shapes: x ``(..., d)`` → f ``(...)``. Parameters ``weight (N, d)``, ``bias (N,)``.
    ``attribution_weights(x)`` gives π ``(..., N)`` with ``π_j = softmax_j((W_j·x + b_j)/ε)``
    (one-hot argmax at ε = 0): ``∂f/∂b_j = π_j``, ``∇_x f = E_π[W]``.
    """

    def __init__(
        self,
        in_features: int,
        n_atoms: int,
        eps: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}")
        if not isinstance(n_atoms, int) or n_atoms < 1:
            raise ValueError(f"n_atoms must be a positive int, got {n_atoms!r}")
        self.in_features = in_features
        self.n_atoms = n_atoms
        self.eps = check_eps(eps)
        self.weight = nn.Parameter(torch.empty(n_atoms, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(n_atoms, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_atoms(cls, y: Tensor, g: Tensor, t: float = 1.0, eps: float = 1.0) -> "LSELayer":
        """The layer whose Hopf–Cole atoms at time t are ``(y, g)``: y ``(N, d)``, g ``(N,)``."""
        if y.dim() != 2:
            raise ValueError(f"y must have shape (N, d), got {tuple(y.shape)}")
        if g.shape != (y.shape[0],):
            raise ValueError(f"g must have shape (N,) = ({y.shape[0]},), got {tuple(g.shape)}")
        layer = cls(y.shape[1], y.shape[0], eps, device=y.device, dtype=y.dtype)
        W, b = hopf.affine_from_atoms(y, g, t)
        with torch.no_grad():
            layer.weight.copy_(W)
            layer.bias.copy_(b)
        return layer

    @property
    def spec(self):
        """``HJSpec(Quadratic(), eps, "hopf_cole")`` — H = |p|², exact Hopf–Cole."""
        return _quadratic_spec(self.eps)

    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (..., {self.in_features})")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have shape (..., in_features={self.in_features}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
        check_finite(x, "x")

    def logits(self, x: Tensor) -> Tensor:
        """The affine scores ``s_j = W_j·x + b_j``: ``(..., N)``."""
        self._check_x(x)
        return x @ self.weight.transpose(0, 1) + self.bias

    def forward(self, x: Tensor) -> Tensor:
        """``f_ε(x)``: ``(..., d) → (...)``; ``max_j s_j`` at ε = 0."""
        self._check_x(x)
        return hopf.lse(x, self.weight, self.bias, self.eps)

    def attribution_weights(self, x: Tensor) -> Tensor:
        """π ``(..., N)``: ``softmax(s/ε)`` (at ε = 0 split evenly over the maximisers);
        rows sum to 1."""
        return hopf.gibbs(self.logits(x), self.eps)

    def atoms(self, t: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(y, g)`` at time t by the inverse map ``y_j = 2tW_j``, ``g_j = −b_j − t|W_j|²``."""
        return hopf.atoms_from_affine(self.weight, self.bias, t)

    def tropical_gap_bound(self) -> float:
        """``ε log N``: ``0 ≤ f_ε − f_0 ≤ ε log N`` for every input."""
        return self.eps * math.log(self.n_atoms)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_atoms={self.n_atoms}, eps={self.eps}"
