"""RetNet-style retention as an HJ spec on ``HeadLinearSSM``; no kernel of its own (ssd path)."""
import torch
from ..hamiltonians import HeadLinearSSM
from ..spec import ConstantStep, HJSpec
from .base import RecurrentBlock


class HJRetention(RecurrentBlock):
    """``S_t = γ_h S_{t−1} + v_t k_tᵀ/√d``, ``y_t = S_t q_t`` (γ_h = 1 − 2^{−5−h}): euler_b, Δ = 1."""
    linear_readout = "C"

    def __init__(self, d_model: int, n_heads: int = 4, scheme: str = "euler_b", eps: float = 0.0, backend="auto"):
        super().__init__()
        if not (isinstance(n_heads, int) and n_heads >= 1 and d_model % n_heads == 0):
            raise ValueError(f"n_heads must be an int >= 1 dividing d_model={d_model}, got {n_heads!r}")
        self.input_size, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.qkv = torch.nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj, self.backend = torch.nn.Linear(d_model, d_model, bias=False), backend
        self.register_buffer("log_gamma", torch.log1p(-2.0 ** (-5.0 - torch.arange(n_heads))))  # a_h
        self.spec = HJSpec(HeadLinearSSM(), viscosity=eps, step=ConstantStep(1.0), scheme=scheme)

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.n_heads, self.d_head, self.d_head),)

    def prepare(self, x: torch.Tensor, state: torch.Tensor) -> tuple[dict, dict, torch.Tensor]:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, self.d_head)).unbind(2)  # C, B, x
        return {"x": v, "B": k * self.d_head ** -0.5, "C": q}, {"a": self.log_gamma.to(x.dtype)}, state

    def finish(self, ys: torch.Tensor, seq: dict) -> torch.Tensor:
        return self.out_proj(ys.flatten(-2))
