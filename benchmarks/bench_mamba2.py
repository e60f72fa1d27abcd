"""Benchmark: ``HJMamba2`` against transformers' ``Mamba2Mixer`` (its pure-torch CPU path:
chunked SSD einsums, F.conv1d, the torch decoding step), side by side in one run.

Shape: one Mamba-2 layer, batch 1, L = 2048, d_model 768 (d_inner 1536 = 24 heads x headdim
64), d_state 128, one group, float32, the same weights in both. Rows:

- forward (no grad) and forward + backward (gradients of the input and every parameter);
- the decoding step per token from a cached state (``HJMamba2.step`` under no_grad vs the
  mixer called on one token with a ``DynamicCache``);
- ``hjseq ssd direct``: the same block with the scan called through ``hjseq.ops.ssd``
  (Mamba-2's call, the block's chunk size) instead of the engine's generic ``ssd`` path, to
  tell whether a closed-form kernel for HJMamba2 would pay;
- the bound: the block's two projections alone (in_proj, out_proj: torch.mm, the same in
  every implementation), with the float32 matmul rate they reach.

Candidates run interleaved (one call of each in turn) so load on a shared machine hits all
alike; medians are printed with the backends that actually ran.

    python benchmarks/bench_mamba2.py [--quick] [--threads 2] [--repeats N] [--json PATH]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any, Callable

import torch

from hjseq.bench.harness import Record, dump_json, interleaved, table
from hjseq.nn import HJMamba2
from hjseq.ops import causal_conv1d, resolve, ssd

STEPS = 16  # decoding steps per timed call (the table reports ms per token)
BOUND = "in_proj + out_proj mm (bound)"


def ssd_direct(m: HJMamba2, u: torch.Tensor) -> torch.Tensor:
    """HJMamba2's forward with the scan through ``hjseq.ops.ssd`` (mamba-ssm's call)."""
    b, L, _ = u.shape
    z0, x0, z, xBC, dt = m._split_proj(m.in_proj(u))
    xBC = causal_conv1d(xBC.transpose(1, 2), m.conv1d.weight[:, 0], m.conv1d.bias,
                        activation="silu").transpose(1, 2)
    xs, B, C = xBC.split([m.d_ssm, m.ngroups * m.d_state, m.ngroups * m.d_state], dim=-1)
    y = ssd(xs.unflatten(-1, (m.nheads, m.headdim)), dt, -torch.exp(m.A_log.float()),
            B.unflatten(-1, (m.ngroups, m.d_state)), C.unflatten(-1, (m.ngroups, m.d_state)),
            m.chunk_size, D=m.D, dt_bias=m.dt_bias, dt_softplus=True)
    return m.out_proj(m.norm(y.flatten(-2), z))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", metavar="PATH", help="write the records as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from transformers import DynamicCache, Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        print(f"transformers is needed for the side-by-side run: {e}", file=sys.stderr)
        return 2
    hf_logging.set_verbosity_error()  # its "falling back to the torch path" notices
    b, L, d, P, N = (1, 256, 128, 32, 32) if args.quick else (1, 2048, 768, 64, 128)
    torch.manual_seed(0)
    cfg = Mamba2Config(hidden_size=d, num_heads=2 * d // P, head_dim=P, expand=2, state_size=N,
                       n_groups=1, conv_kernel=4, chunk_size=256, num_hidden_layers=1,
                       vocab_size=8)
    hf = Mamba2Mixer(cfg, layer_idx=0).eval()
    m = HJMamba2(d, d_state=N, headdim=P, chunk_size=256, norm_eps=cfg.layer_norm_epsilon).eval()
    m.load_state_dict(hf.state_dict(), strict=True)
    shape = f"b={b} L={L} d_model={d} H={m.nheads} P={P} N={N}"
    u = torch.randn(b, L, d)
    ug = u.clone().requires_grad_(True)
    tok = torch.randn(b, 1, d)

    # the backends that run (never the ones asked for)
    H = m.nheads
    ssd_backend, _ = resolve("ssd_scan", "auto", "cpu", x=torch.empty(b, L, H, P),
                             log_decay=torch.empty(b, L, H), B=torch.empty(b, L, 1, N),
                             C=torch.empty(b, L, 1, N))
    ssu_backend, _ = resolve("selective_state_update", "auto", "cpu",
                             state=torch.empty(b, H, P, N), x=torch.empty(b, H, P))
    conv_backend, _ = resolve("causal_conv1d", "auto", "cpu", x=torch.empty(b, m.conv_dim, L))
    assert m.fused_path() == "ssd"

    with torch.no_grad():  # same outputs before timing anything
        want = hf(u)
        torch.testing.assert_close(m(u), want, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(ssd_direct(m, u), want, rtol=1e-3, atol=1e-3)
        cache = DynamicCache(config=cfg)
        hf(u[:, :16], cache=cache)
        _, state = m(u[:, :16], return_final_state=True)
        torch.testing.assert_close(m.step(tok[:, 0], state)[0], hf(tok, cache=cache)[:, 0],
                                   rtol=1e-3, atol=1e-3)

    def fwd_bwd(f: Callable[[torch.Tensor], torch.Tensor], mod: torch.nn.Module) -> None:
        ug.grad = None
        mod.zero_grad(set_to_none=True)
        f(ug).sum().backward()

    def no_grad(f: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return f()
        return run

    W_in, W_out = m.in_proj.weight.detach(), m.out_proj.weight.detach()
    u2, y2 = u.reshape(b * L, d), torch.randn(b * L, m.d_inner)
    hj_be = f"hjseq (ssd_scan {ssd_backend}, conv {conv_backend})"
    runs: dict[tuple[str, str], Callable[[], Any]] = {
        ("forward", hj_be): no_grad(lambda: m(u)),
        ("forward", "hjseq ssd direct"): no_grad(lambda: ssd_direct(m, u)),
        ("forward", "transformers torch"): no_grad(lambda: hf(u)),
        ("forward", BOUND): no_grad(
            lambda: (u2 @ W_in.T, y2 @ W_out.T)),
        ("forward+backward", hj_be): lambda: fwd_bwd(m, m),
        ("forward+backward", "hjseq ssd direct"): lambda: fwd_bwd(lambda x: ssd_direct(m, x), m),
        ("forward+backward", "transformers torch"): lambda: fwd_bwd(hf, hf),
        ("decode step / token", f"hjseq (selective_state_update {ssu_backend})"):
            no_grad(lambda: [m.step(tok[:, 0], state) for _ in range(STEPS)]),
        ("decode step / token", "transformers torch"):
            no_grad(lambda: [hf(tok, cache=cache) for _ in range(STEPS)]),
    }
    times = interleaved(runs, args.repeats)
    rec = {k: Record(k[0], shape, "float32", k[1],
                     statistics.median(v) / (STEPS if k[0].startswith("decode") else 1), len(v))
           for k, v in times.items()}
    for (op, who), r in rec.items():
        peer = rec.get((op, "transformers torch"))
        if peer is not None and who not in ("transformers torch", BOUND):
            r.ratio_vs["speed-up vs transformers"] = peer.median_ms / r.median_ms
    bound = rec[("forward", BOUND)]
    mm_flops = 2.0 * b * L * d * (W_in.shape[0] + m.d_inner)
    bound.extra["GFLOP/s"] = mm_flops / bound.median_ms / 1e6
    records = list(rec.values())
    print(table(records))
    print(f"\nthreads: {torch.get_num_threads()}; hjseq backends that ran: ssd_scan "
          f"{ssd_backend}, causal_conv1d {conv_backend}, selective_state_update {ssu_backend}; "
          f"block path: {m.fused_path()}; transformers: Mamba2Mixer torch path; bound: the "
          f"projections alone at {bound.extra['GFLOP/s']:.1f} GFLOP/s (float32 mm, this run)")
    if args.json:
        dump_json(records, args.json, bench="mamba2", quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
