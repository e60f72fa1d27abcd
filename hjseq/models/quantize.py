"""Weight formats for decoding: bfloat16 weights and int8 weight-only quantisation.

int8, per output channel (row o of a projection ``W (out, in)``), symmetric::

    s_o = max_i |W_oi| / 127,    q_oi = round(W_oi / s_o) ∈ [−127, 127],    W ≈ s_o q_o

so ``y_o = s_o Σ_i q_oi x_i`` (activations stay float32; the scale is applied once per row).
bfloat16 keeps float32's exponent and 8 bits of mantissa (relative rounding ≤ 2⁻⁹).

:func:`pack_linear` lays a projection out for the fused decoder
(:mod:`hjseq.models.decode`); :func:`fake_quantize` returns a copy of an ``HJLM`` whose
projection weights are replaced by their rounded values, so the quality cost of a format is
measured with the model's own forward (:func:`validation_bpb`), not assumed.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

# the decoder's weight formats ("auto": the model's own dtype)
WEIGHT_FORMATS = ("auto", "float32", "float64", "bfloat16", "int8")


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """``(q int8 (out, in), scale float32 (out,))`` with ``w ≈ scale[:, None] * q``; an
    all-zero row gets scale 1 (q = 0)."""
    if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_int8: w must be a 2-D float tensor (out, in), got "
                         f"{getattr(w, 'shape', type(w).__name__)}")
    if not torch.isfinite(w).all():
        raise ValueError("quantize_int8: w contains NaN or inf")
    w32 = w.detach().float()
    amax = w32.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """``scale[:, None] * q`` in float32."""
    return q.float() * scale[:, None]


def round_weight(w: Tensor, fmt: str) -> Tensor:
    """``w`` after a round trip through ``fmt`` (float32 result for bfloat16/int8)."""
    if fmt == "bfloat16":
        return w.detach().to(torch.bfloat16).float()
    if fmt == "int8":
        return dequantize_int8(*quantize_int8(w))
    if fmt in ("float32", "float64", "auto"):
        return w.detach()
    raise ValueError(f"fmt must be one of {WEIGHT_FORMATS}, got {fmt!r}")


def pack_linear(name: str, weight: Tensor, bias: Tensor | None, fmt: str,
                dtype: torch.dtype) -> dict[str, Tensor]:
    """``{name.weight, [name.scale], [name.bias]}`` for the fused decoder: the weight in
    ``fmt`` ("float32"/"float64": ``dtype``; "bfloat16"; "int8" with its per-row scale),
    the bias in ``dtype``."""
    w = weight.detach()
    out: dict[str, Tensor] = {}
    if fmt == "int8":
        q, s = quantize_int8(w)
        out[f"{name}.weight"], out[f"{name}.scale"] = q, s
    elif fmt == "bfloat16":
        out[f"{name}.weight"] = w.to(torch.bfloat16).contiguous()
    elif fmt in ("float32", "float64"):
        out[f"{name}.weight"] = w.to(dtype).contiguous()
    else:
        raise ValueError(f"fmt must be one of {WEIGHT_FORMATS[1:]}, got {fmt!r}")
    if bias is not None:
        out[f"{name}.bias"] = bias.detach().to(dtype).contiguous()
    return out


def projection_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The projection matrices the decoder quantises: every 2-D weight of an ``nn.Linear``
    and the recurrent cells' ``weight_ih``/``weight_hh`` (the embedding itself is not one;
    a tied head is, through ``lm_head``)."""
    seen, out = set(), []
    for mname, mod in model.named_modules():
        names = []
        if isinstance(mod, nn.Linear):
            names = ["weight"]
        elif hasattr(mod, "weight_ih") and hasattr(mod, "weight_hh"):
            names = ["weight_ih", "weight_hh"]
        for n in names:
            p = getattr(mod, n)
            if isinstance(p, Tensor) and p.dim() == 2 and id(p) not in seen:
                seen.add(id(p))
                out.append((f"{mname}.{n}" if mname else n, p))
    return out


def fake_quantize(model: nn.Module, fmt: str) -> nn.Module:
    """A deep copy of ``model`` whose projection weights hold their ``fmt``-rounded values
    (a tied head is untied first, so the embedding lookup keeps full precision, as in the
    fused decoder)."""
    m = copy.deepcopy(model)
    if getattr(m, "lm_head", None) is not None and getattr(m, "embedding", None) is not None \
            and m.lm_head.weight is m.embedding.weight:
        m.lm_head.weight = nn.Parameter(m.embedding.weight.detach().clone())
    with torch.no_grad():
        for _, p in projection_weights(m):
            p.copy_(round_weight(p, fmt).to(p.dtype))
    return m


@torch.no_grad()
def validation_bpb(model: nn.Module, val: Tensor, seq_len: int = 256,
                   n_windows: int = 64, batch_size: int = 16) -> float:
    """Bits per byte of ``model`` on ``n_windows`` evenly spaced windows of the byte tensor
    ``val`` (the same windows as training's evaluation for the same settings)."""
    from hjseq.models import data as D
    from hjseq.models.lm import cross_entropy

    was = model.training
    model.eval()
    offsets = D.val_offsets(val, n_windows, seq_len)
    total, count = 0.0, 0
    for chunk in offsets.split(batch_size):
        x, y = D.windows(val, chunk, seq_len)
        total += float(cross_entropy(model(x), y)) * y.numel()
        count += y.numel()
    model.train(was)
    return D.bits_per_byte(total / count)
