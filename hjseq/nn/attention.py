"""Multi-head attention as the exact Hopf–Cole solution of ``u_t + |∇u|² = ε Δu``.

For one head, a query q ``(d_k,)`` and keys ``k_j``: take atoms ``y_j = k_j``,
``g_j = −|k_j|²/2`` at time ``t = ½``. The Hopf–Cole exponent is

    −(g_j + |q − y_j|²/(4t))/ε = −(−|k_j|²/2 + |q|²/2 − q·k_j + |k_j|²/2)/ε
                               = (q·k_j)/ε − |q|²/(2ε),

and the last term does not depend on j, so the Gibbs weights are

    π_j(q) = softmax_j(q·k_j / ε),

i.e. the logits are one matmul ``Q Kᵀ/ε`` (never pairwise distances). The output is the
Gibbs average ``E_π[v] = Σ_j π_j v_j``. At ``ε = √d_k`` this is
``softmax(QKᵀ/√d_k) V`` — ``F.scaled_dot_product_attention`` exactly; ``ε = 0`` is hard
(argmax) attention, the Hopf–Lax limit. A masked key has ``g_j = +∞``: weight 0.

Rotary positions (``pos="rope"``): query i and key j are rotated by the orthogonal maps
``R_i``, ``R_j`` (pairs of channels turned by angles ``p·θ_m``, ``θ_m = base^(−2m/d_k)``), so
``(R_i q_i)·(R_j k_j) = q_i·R_{j−i} k_j`` depends on j − i only. Nothing else changes: the
atoms are the rotated keys ``y_j = R_j k_j`` with ``g_j = −|y_j|²/2 = −|k_j|²/2`` (a
rotation keeps norms), the query point is ``R_i q_i``, and π, the Hopf–Cole value and the
KV cache (which stores rotated keys) are those of the formulas above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hjseq import hopf
from hjseq.nn.lse import _quadratic_spec, check_eps, check_finite

POSITIONS = ("rope", "none")  # positional schemes of HJAttention: rotary, or none (NoPE)


def rope_angles(positions: Tensor, d_head: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of the rotary angles ``p·θ_m``, ``θ_m = base^(−2m/d_head)``, m < d_head/2:
    each ``(L, d_head)`` (the half-width table repeated twice, for :func:`apply_rope`).
    Angles are computed in float64 when ``dtype`` is float64, else in float32."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    m = torch.arange(0, d_head, 2, device=positions.device, dtype=work)
    inv_freq = base ** (-m / d_head)
    ang = positions.to(work)[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def apply_rope(z: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``z (..., L, d)`` by the angles of ``cos``/``sin`` ``(L, d)``: channel m pairs with
    channel m + d/2 (the half-split layout) and the pair turns by angle ``p·θ_m``. An
    orthogonal map per position, computed in the angles' dtype, returned in ``z``'s."""
    h = z.shape[-1] // 2
    zf = z.to(cos.dtype)
    rot = torch.cat([-zf[..., h:], zf[..., :h]], -1)
    return (zf * cos + rot * sin).to(z.dtype)


@dataclass
class KVCache:
    """Keys/values seen so far, for ``HJAttention.step``.

    k, v: ``(B, n_heads, T, d_k)``; key_padding_mask: ``(B, T)`` bool (True = padding,
    ignored) or None when every cached key is valid. ``len(cache)`` is T.
    """

    k: Tensor
    v: Tensor
    key_padding_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.k.shape[2]


class HJAttention(nn.Module):
    """Multi-head self-attention ``E_π[v]`` with Hopf–Cole weights ``π = softmax(QKᵀ/ε)``.

    Args:
        d_model: model width D (divisible by ``n_heads``).
        n_heads: H heads of width ``d_k = D/H``.
        causal: query i sees keys ``j ≤ i``.
        eps: temperature/viscosity ε ≥ 0; ``None`` means ``√d_k`` (standard attention);
            ``0`` is hard argmax attention (ties split evenly).
        bias: biases in the q/k/v/out projections.
        use_sdpa: when weights are not requested and ε > 0, run the same computation
            through ``F.scaled_dot_product_attention(scale=1/ε)`` (fused kernels).
        pos: ``"rope"`` rotates queries and keys by their positions (rotary embedding;
            ``d_k`` must be even); ``"none"`` uses no positional information (NoPE).
        rope_base: the base of the rotary frequencies ``θ_m = base^(−2m/d_k)``.

    Shapes: x ``(B, L, D)`` → y ``(B, L, D)``; weights π ``(B, H, L, L)``.
    ``key_padding_mask``: ``(B, L)`` bool, True marks padding keys (the
    ``torch.nn.MultiheadAttention`` convention); a query with no visible key outputs 0
    and has all-zero weights. With RoPE a token's position is its index in the sequence
    (padding included); scores depend only on differences of positions.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        causal: bool = True,
        eps: float | None = None,
        bias: bool = True,
        *,
        use_sdpa: bool = True,
        pos: str = "none",
        rope_base: float = 10000.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads must be a positive divisor of d_model={d_model}, got {n_heads!r}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.causal = bool(causal)
        self.eps = math.sqrt(self.d_head) if eps is None else check_eps(eps)
        self.use_sdpa = use_sdpa
        if pos not in POSITIONS:
            raise ValueError(f"pos must be one of {', '.join(map(repr, POSITIONS))} (rotary or no "
                             f"positional encoding), got {pos!r}")
        if pos == "rope" and self.d_head % 2:
            raise ValueError(f"pos='rope' needs an even head width d_k = d_model/n_heads, got "
                             f"d_k = {self.d_head}; change n_heads or use pos='none'")
        if not (isinstance(rope_base, (int, float)) and math.isfinite(rope_base) and rope_base > 1):
            raise ValueError(f"rope_base must be a finite number > 1, got {rope_base!r}")
        self.pos, self.rope_base = pos, float(rope_base)
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.q_proj = nn.Linear(d_model, d_model, **kw)
        self.k_proj = nn.Linear(d_model, d_model, **kw)
        self.v_proj = nn.Linear(d_model, d_model, **kw)
        self.out_proj = nn.Linear(d_model, d_model, **kw)

    @property
    def spec(self):
        """``HJSpec(Quadratic(), eps, "hopf_cole")`` — atoms y = k, g = −|k|²/2, t = ½."""
        return _quadratic_spec(self.eps)

    # ---------------------------------------------------------------- checks
    def _check_x(self, x: Tensor, name: str = "x", rank: int = 3) -> None:
        shape = "(B, L, d_model)" if rank == 3 else "(B, d_model)"
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {shape}")
        if x.dim() != rank or x.shape[-1] != self.d_model:
            raise ValueError(f"{name} must have shape {shape} with d_model={self.d_model}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
        check_finite(x, name)

    @staticmethod
    def _check_mask(mask: Tensor | None, B: int, L: int, name: str = "key_padding_mask") -> None:
        if mask is None:
            return
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor of shape (B, L_k) (True = padding)")
        if mask.shape != (B, L):
            raise ValueError(f"{name} must have shape (B, L_k) = ({B}, {L}), got {tuple(mask.shape)}")

    # ---------------------------------------------------------------- pieces
    def _heads(self, z: Tensor) -> Tensor:
        B, L, _ = z.shape
        return z.view(B, L, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, L, d_k)

    def qkv(self, x: Tensor, start: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Projected ``q, k, v``: each ``(B, H, L, d_k)``. With RoPE, q and k are rotated to
        positions ``start, …, start + L − 1`` (the query points and atoms of the HJ view)."""
        self._check_x(x)
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if self.pos == "rope":
            positions = torch.arange(start, start + x.shape[1], device=x.device)
            cos, sin = rope_angles(positions, self.d_head, self.rope_base, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def atoms(self, x: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor, float]:
        """Hopf–Cole atoms of every head: ``y = k`` ``(B, H, L, d_k)`` (the rotated keys with
        RoPE), ``g = −|k|²/2`` ``(B, H, L)`` (``+∞`` at padding keys), and ``t = ½``."""
        _, k, _ = self.qkv(x)
        self._check_mask(key_padding_mask, x.shape[0], x.shape[1])
        g = -0.5 * (k * k).sum(-1)
        if key_padding_mask is not None:
            g = g.masked_fill(key_padding_mask[:, None, :], math.inf)
        return k, g, 0.5

    def _visible(self, B: int, Lq: int, Lk: int, key_padding_mask: Tensor | None, device) -> Tensor | None:
        """Bool ``(B|1, 1, Lq, Lk)``, True where query i may see key j; None = all visible.
        Causal alignment is bottom-right: query i sits at absolute position ``Lk − Lq + i``."""
        vis = None
        if self.causal and Lq > 1:
            pos_q = torch.arange(Lk - Lq, Lk, device=device)[:, None]
            vis = (torch.arange(Lk, device=device)[None, :] <= pos_q)[None, None]
        if key_padding_mask is not None:
            keep = (~key_padding_mask)[:, None, None, :]
            vis = keep if vis is None else vis & keep
        return vis

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, vis: Tensor | None, want_weights: bool):
        """``E_π[v]`` with ``π = softmax(q·k/ε)`` over visible keys: returns (out, π or None)."""
        if not want_weights and self.eps > 0 and self.use_sdpa:
            if vis is None:
                return F.scaled_dot_product_attention(q, k, v, scale=1.0 / self.eps), None
            if bool(vis.any(-1).all()):  # every query sees a key (else SDPA returns NaN rows)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=vis, scale=1.0 / self.eps), None
        s = q @ k.transpose(-1, -2)  # (B, H, Lq, Lk): the Hopf–Cole exponent times ε, up to a per-query constant
        if vis is not None:
            s = s.masked_fill(~vis, -math.inf)
        pi = hopf.gibbs(s, self.eps)  # ε = 0: the Hopf–Lax limit, ties split evenly
        if vis is not None:  # a query with no visible key (all scores −∞): define π = 0
            pi = pi.masked_fill(~vis.any(-1, keepdim=True), 0.0)
        return pi @ v, pi

    def _merge(self, o: Tensor) -> Tensor:
        B, _, L, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, L, self.d_model))

    # ---------------------------------------------------------------- API
    def _self_attention(self, x: Tensor, key_padding_mask: Tensor | None, want_weights: bool):
        q, k, v = self.qkv(x)
        B, L, _ = x.shape
        self._check_mask(key_padding_mask, B, L)
        if key_padding_mask is None and not want_weights and self.eps > 0 and self.use_sdpa:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0 / self.eps)
            return self._merge(o), None, k, v
        o, pi = self._attend(q, k, v, self._visible(B, L, L, key_padding_mask, x.device), want_weights)
        return self._merge(o), pi, k, v

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Self-attention ``(B, L, D) → (B, L, D)``; with ``return_weights`` also π ``(B, H, L, L)``."""
        y, pi, _, _ = self._self_attention(x, key_padding_mask, return_weights)
        return (y, pi) if return_weights else y

    def attribution_weights(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """π ``(B, H, L, L)``: the Hopf–Cole Gibbs weights of every head and query."""
        return self._self_attention(x, key_padding_mask, True)[1]

    def prefill(self, x: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """Forward over a prompt ``(B, L, D)`` and the ``KVCache`` to continue with ``step``."""
        y, _, k, v = self._self_attention(x, key_padding_mask, False)
        return y, KVCache(k, v, key_padding_mask)

    def step(self, x_t: Tensor, cache: KVCache | dict | None = None) -> tuple[Tensor, KVCache]:
        """One decoding step: x_t ``(B, D)`` → y_t ``(B, D)`` and the cache grown by one key.

        ``cache`` is a ``KVCache`` (or a dict with keys ``k``, ``v`` and optionally
        ``key_padding_mask``), or None to start. The new token is always a valid key; every
        cached key is visible to it, so running ``step`` over a sequence equals ``forward``
        (causal). With RoPE the new token sits at position ``len(cache)`` and the cache holds
        rotated keys. Cost O(T·D) per step; the cache grows by concatenation.
        """
        self._check_x(x_t, "x_t", rank=2)
        B = x_t.shape[0]
        if isinstance(cache, dict):
            cache = KVCache(cache["k"], cache["v"], cache.get("key_padding_mask"))
        start = len(cache) if isinstance(cache, KVCache) else 0
        q, k, v = self.qkv(x_t[:, None, :], start)  # (B, H, 1, d_k)
        if cache is None:
            mask = None
        else:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache, a dict or None, got {type(cache).__name__}")
            expect = (B, self.n_heads, len(cache), self.d_head)
            if cache.k.shape != expect or cache.v.shape != expect:
                raise ValueError(
                    f"cache.k/cache.v must have shape (B, n_heads, T, d_k) = {expect}, "
                    f"got {tuple(cache.k.shape)} / {tuple(cache.v.shape)}"
                )
            self._check_mask(cache.key_padding_mask, B, len(cache), "cache.key_padding_mask")
            k, v = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
            mask = cache.key_padding_mask
            if mask is not None:
                mask = torch.cat([mask, mask.new_zeros(B, 1)], 1)
        vis = None if mask is None else (~mask)[:, None, None, :]
        o, _ = self._attend(q, k, v, vis, False)
        return self._merge(o)[:, 0], KVCache(k, v, mask)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}, "
                f"eps={self.eps:g}, pos={self.pos}")
