"""Build each hjseq block from its HJ spec and measure how exactly it reproduces the
standard layer it discretizes (float64, max abs error of the outputs and final states).

    python examples/reproduce_layers.py            # prints the table, exits 1 if any error > 1e-10

Standard layers: torch.nn.RNN/GRU/LSTM (copied with ``from_torch``), transformers'
``MambaMixer`` (the reference PyTorch Mamba block; its state_dict loads into HJMamba),
torch.nn.MultiheadAttention (weights copied into HJAttention at ε = √d_k), and for the LSE
layer softplus (N = 2 atoms) and max (ε = 0, the tropical limit).

The recurrent blocks run the engine's reference loop (``backend="loop"``: the Hamiltonian's
velocity stepped by the spec's scheme). At Δ = 1, ``backend="auto"`` would dispatch to
torch's own fused kernels, and the comparison would be torch against itself.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from hjseq.nn import HJGRU, HJLSTM, HJRNN, HJAttention, HJMamba, LSELayer

f64 = torch.float64
B, L, I, H = 3, 12, 5, 8


def describe(spec) -> str:
    step = type(spec.step).__name__
    return f"{type(spec.hamiltonian).__name__}, ε={spec.viscosity}, {step}, {spec.scheme}"


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


def recurrent(cls, torch_cls) -> tuple[str, str, float]:
    ref = torch_cls(I, H, batch_first=True).to(f64)
    block = cls.from_torch(ref, backend="loop")  # a drop-in: torch's call and state shapes
    x = torch.randn(B, L, I, dtype=f64)
    out, final = block(x)
    tout, hn = ref(x)
    if isinstance(hn, tuple):
        e_state = max(err(final[0], hn[0]), err(final[1], hn[1]))
    else:
        e_state = err(final, hn)
    return f"torch.nn.{torch_cls.__name__}", describe(block.spec), max(err(out, tout), e_state)


def mamba() -> tuple[str, str, float]:
    try:
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer
    except ImportError as e:  # transformers is a test extra
        return "transformers MambaMixer", f"not run: {e}", float("nan")
    d_model, d_state, d_conv, expand = 16, 4, 4, 2
    cfg = MambaConfig(hidden_size=d_model, state_size=d_state, conv_kernel=d_conv, expand=expand,
                      time_step_rank=2, use_conv_bias=True, use_bias=False)
    ref = MambaMixer(cfg, layer_idx=0).to(f64)
    block = HJMamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=2, dtype=f64)
    block.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(B, L, d_model, dtype=f64)
    with torch.no_grad():
        e = err(block(x), ref(x))
    return "transformers MambaMixer", describe(block.spec), e


def attention() -> tuple[str, str, float]:
    d_model, n_heads = 16, 4
    ref = nn.MultiheadAttention(d_model, n_heads, batch_first=True, dtype=f64)
    block = HJAttention(d_model, n_heads, causal=True, dtype=f64)  # ε = √d_k
    with torch.no_grad():
        for proj, w, b in zip((block.q_proj, block.k_proj, block.v_proj),
                              ref.in_proj_weight.chunk(3), ref.in_proj_bias.chunk(3)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        block.out_proj.weight.copy_(ref.out_proj.weight)
        block.out_proj.bias.copy_(ref.out_proj.bias)
    x = torch.randn(B, L, d_model, dtype=f64)
    mask = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        e = err(block(x), ref(x, x, x, attn_mask=mask, need_weights=False)[0])
    return "torch.nn.MultiheadAttention (causal)", describe(block.spec), e


def lse() -> list[tuple[str, str, float]]:
    eps = 0.3
    layer = LSELayer(1, 2, eps=eps, dtype=f64)
    with torch.no_grad():
        layer.weight[1].zero_()
        layer.bias[1] = 0.0
    x = torch.linspace(-3, 3, 101, dtype=f64)[:, None]
    w, b = layer.weight[0, 0], layer.bias[0]
    with torch.no_grad():
        e_soft = err(layer(x), F.softplus(w * x[:, 0] + b, beta=1 / eps))
    trop = LSELayer(I, 7, eps=0.0, dtype=f64)
    z = torch.randn(B, L, I, dtype=f64)
    with torch.no_grad():
        e_max = err(trop(z), (z @ trop.weight.T + trop.bias).max(-1).values)
    return [("F.softplus (N = 2 atoms)", describe(layer.spec), e_soft),
            ("max (ε = 0, tropical)", describe(trop.spec), e_max)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-10, help="fail above this max abs error")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    rows = [("HJRNN", *recurrent(HJRNN, nn.RNN)), ("HJGRU", *recurrent(HJGRU, nn.GRU)),
            ("HJLSTM", *recurrent(HJLSTM, nn.LSTM)), ("HJMamba", *mamba()),
            ("HJAttention", *attention()), *[("LSELayer", *r) for r in lse()]]
    print(f"{'block':<12} {'reproduces':<38} {'spec (H, ε, step, scheme)':<46} max abs err")
    bad = False
    for name, target, spec, e in rows:
        print(f"{name:<12} {target:<38} {spec:<46} {e:.2e}")
        bad |= not e <= args.tol
    print(f"float64, seed {args.seed}; tolerance {args.tol:g}: {'FAIL' if bad else 'all within'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
