"""The tropical limit ε → 0 (Maslov dequantization) of a model, and its linear regions.

``tropicalize(model)`` returns a deep copy in which every LSE layer becomes max-plus
(``f_0 = max_j (W_j·x + b_j)``, the Hopf–Lax formula), every ``HJAttention`` becomes hard
(argmax) attention, and every recurrent block's viscosity — there the noise of the
stochastic characteristics — is set to 0. Per LSE layer the deviation is bounded,

    0 ≤ f_ε(x) − f_0(x) ≤ ε log N      (N atoms),

and the report sums these bounds. For attention the same bound holds for the log-partition
of the scores (``ε log L_k`` with L_k visible keys) but not for the output ``E_π[v]``, which
jumps where the argmax switches; the report says so.

A tropical model is piecewise linear: its pieces are the sets of inputs sharing one argmax
pattern (which atom wins in every max). :func:`count_linear_regions` counts them on a grid.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from hjseq.nn.attention import HJAttention
from hjseq.nn.lse import LSELayer


def _is_lse_units(m: nn.Module) -> bool:
    """A bank of LSE units (e.g. ``hjseq.models.lm.LSEMLP``): ``eps``, ``n_atoms``, ``n_units``,
    ``in_proj`` producing ``n_units·n_atoms`` scores."""
    return all(hasattr(m, a) for a in ("eps", "n_atoms", "n_units", "in_proj")) and not isinstance(m, LSELayer)


def _is_recurrent(m: nn.Module) -> bool:
    from hjseq.nn.base import RecurrentBlock

    return isinstance(m, RecurrentBlock)


@dataclass
class TropicalEntry:
    """One module changed by :func:`tropicalize`."""

    name: str
    kind: str  # "lse", "lse_units", "attention", "recurrent"
    eps: float  # ε before
    n_atoms: int | None
    bound: float | None  # ε log N for LSE kinds; None where no output bound holds
    note: str = ""


@dataclass
class TropicalReport:
    """What :func:`tropicalize` changed; ``lse_bound`` = Σ ε log N over LSE layers/units
    (each unit's output moves by at most its own ε log N)."""

    entries: list[TropicalEntry] = field(default_factory=list)

    @property
    def lse_bound(self) -> float:
        return float(sum(e.bound for e in self.entries if e.bound is not None))

    def to_dict(self) -> dict:
        return {"lse_bound": self.lse_bound, "entries": [asdict(e) for e in self.entries]}


def tropicalize(model: nn.Module) -> tuple[nn.Module, TropicalReport]:
    """A deep copy of ``model`` at ε = 0 everywhere, and the report of the deviation bounds.

    LSELayer → max-plus; LSE unit banks (``LSEMLP``) → maxout; HJAttention → hard attention;
    recurrent blocks (HJRNN/HJGRU/HJLSTM/HJMamba) → noise-free characteristics. The input
    model is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    out = copy.deepcopy(model)
    report = TropicalReport()
    for name, m in out.named_modules():
        if isinstance(m, LSELayer):
            report.entries.append(TropicalEntry(name, "lse", m.eps, m.n_atoms, m.tropical_gap_bound()))
            m.eps = 0.0
        elif _is_lse_units(m):
            eps = float(m.eps)
            report.entries.append(TropicalEntry(
                name, "lse_units", eps, m.n_atoms, m.n_units * eps * math.log(m.n_atoms),
                f"{m.n_units} units, each within ε log N = {eps * math.log(m.n_atoms):.3g}"))
            m.eps = 0.0
        elif isinstance(m, HJAttention):
            report.entries.append(TropicalEntry(
                name, "attention", m.eps, None, None,
                "score log-partition within ε log L_k per query; the output E_π[v] has no ε log N bound"))
            m.eps = 0.0
        elif _is_recurrent(m):
            eps = m.eps
            eps_f = float(eps.detach().max()) if isinstance(eps, Tensor) else float(eps)
            report.entries.append(TropicalEntry(name, "recurrent", eps_f, None, None,
                                                "viscosity is noise; eval-mode outputs unchanged"))
            m.eps = 0.0
    return out, report


# ----------------------------------------------------------------------------- linear regions
def _pattern_hooks(model: nn.Module, store: list[Tensor]) -> list:
    """Forward hooks recording, per input row, which atom/key wins in every max of the model."""
    hooks = []

    def flat(idx: Tensor, lead: int) -> Tensor:
        return idx.reshape(lead, -1)

    for m in model.modules():
        if isinstance(m, LSELayer):
            def hook(mod, args, out):
                x = args[0]
                store.append(flat(mod.logits(x).argmax(-1), x.shape[0]))
        elif _is_lse_units(m):
            def hook(mod, args, out):
                x = args[0]
                z = mod.in_proj(x).unflatten(-1, (mod.n_units, mod.n_atoms))
                store.append(flat(z.argmax(-1), x.shape[0]))
        elif isinstance(m, HJAttention):
            def hook(mod, args, out):
                x = args[0]
                q, k, _ = mod.qkv(x)
                s = q @ k.transpose(-1, -2)
                if mod.causal:
                    L = x.shape[1]
                    s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=x.device).tril(), -math.inf)
                store.append(flat(s.argmax(-1), x.shape[0]))
        else:
            continue
        hooks.append(m.register_forward_hook(hook))
    return hooks


def linear_region_patterns(model: nn.Module, x: Tensor) -> Tensor:
    """The argmax pattern of every max in the (tropical) model at each row of x:
    ``(n, n_maxes)`` long. Rows with equal patterns lie in the same linear piece."""
    store: list[Tensor] = []
    hooks = _pattern_hooks(model, store)
    if not hooks:
        raise ValueError("model contains no LSELayer, LSE unit bank or HJAttention: nothing to count")
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(store, dim=1)


def count_linear_regions(
    model: nn.Module,
    lo: Tensor | float,
    hi: Tensor | float,
    resolution: int = 200,
    *,
    in_features: int | None = None,
    dtype: torch.dtype | None = None,
) -> int:
    """Number of linear pieces of a tropical model on the box ``[lo, hi]^d``, d = 1 or 2,
    sampled on a ``resolution^d`` grid (in the model's dtype unless given): the number of distinct argmax patterns. Each pattern
    cell is convex (fixed winners ⇒ linear inequalities), so this counts every piece wider
    than the grid spacing. For inputs of other shapes, call :func:`linear_region_patterns`
    on your own sample and count ``torch.unique(patterns, dim=0)``."""
    if dtype is None:  # the model's own dtype
        dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
    lo_t = torch.as_tensor(lo, dtype=dtype).reshape(-1)
    hi_t = torch.as_tensor(hi, dtype=dtype).reshape(-1)
    if in_features is None:  # from the first LSE layer, else from the box
        in_features = next((m.in_features for m in model.modules() if isinstance(m, LSELayer)), None)
    d = in_features or max(lo_t.numel(), hi_t.numel())
    if d not in (1, 2):
        raise ValueError(f"count_linear_regions grids only d = 1 or 2 inputs, got d={d}")
    lo_t, hi_t = lo_t.expand(d), hi_t.expand(d)
    axes = [torch.linspace(float(lo_t[i]), float(hi_t[i]), resolution, dtype=dtype) for i in range(d)]
    x = axes[0][:, None] if d == 1 else torch.cartesian_prod(*axes)
    patterns = linear_region_patterns(model, x)
    return int(torch.unique(patterns, dim=0).shape[0])
