"""Compile every hjseq Triton kernel for a real GPU target (sm_80) without a GPU.

Run as a script in a process WITHOUT TRITON_INTERPRET (so ``triton.jit`` builds real
kernels), with the wrappers' CUDA launch configurations: ``hjseq.ops._triton_offline``
replaces each kernel by a shim that, when the Python wrapper launches it, compiles it
through Triton's full pipeline (to a cubin, with Triton's bundled ptxas) for the argument
types of that launch instead of running it. The wrappers
are called with small CPU tensors (their values are never read), forward and backward, so
the kernels are compiled with the exact signatures and constexprs real calls use. Prints a
JSON list of {"kernel", "config", "ok", "error"}.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

assert not os.environ.get("TRITON_INTERPRET"), "run without TRITON_INTERPRET"

import torch  # noqa: E402

from hjseq.ops._triton_offline import install  # noqa: E402

ARCH = int(sys.argv[1]) if len(sys.argv) > 1 else 80
RESULTS: list[dict] = []
CONFIG = [""]


def record(kernel: str, opts: dict, compiled, error: Exception | None) -> None:
    RESULTS.append(dict(kernel=kernel, config=CONFIG[0], ok=error is None,
                        error="" if error is None else f"{type(error).__name__}: {error}"[-3000:]))


def leaf(*shape, dtype=torch.bfloat16):
    return torch.zeros(*shape, dtype=dtype).requires_grad_()


def main() -> None:
    install(("selective_scan", "linear_scan", "causal_conv1d", "selective_state_update", "ssd"),
            ARCH, record)
    from hjseq.ops.causal_conv1d.triton import causal_conv1d_triton
    from hjseq.ops.linear_scan.triton import linear_scan_triton
    from hjseq.ops.selective_scan.triton import selective_scan_triton
    from hjseq.ops.selective_state_update.triton import selective_state_update_triton
    from hjseq.ops.ssd.triton import ssd_scan_triton
    f32 = torch.float32

    # one launch configuration per op, with every optional feature switched on
    CONFIG[0] = "bf16, all features, zoh, groups, varlen"
    y, h = selective_scan_triton(leaf(1, 8, 40), leaf(1, 8, 40), leaf(8, 4, dtype=f32),
                                 leaf(1, 2, 4, 40), leaf(1, 2, 4, 40), leaf(8, dtype=f32),
                                 leaf(1, 8, 40), leaf(8, dtype=f32), True,
                                 leaf(2, 8, 4, dtype=f32), True, "zoh", torch.tensor([0, 10, 40]))
    (y.float().sum() + h.sum()).backward()

    CONFIG[0] = "bf16, three-pass split over L (modes 1 and 2)"
    ss = importlib.import_module("hjseq.ops.selective_scan.triton")
    pick = ss._pick_split
    ss._pick_split = lambda m, block_d, device: 3
    y, h = selective_scan_triton(leaf(1, 8, 400), leaf(1, 8, 400), leaf(8, 16, dtype=f32),
                                 leaf(1, 16, 400), leaf(1, 16, 400), leaf(8, dtype=f32),
                                 leaf(1, 8, 400), leaf(8, dtype=f32), True,
                                 leaf(1, 8, 16, dtype=f32), True, "zoh")
    (y.float().sum() + h.sum()).backward()
    ss._pick_split = pick

    CONFIG[0] = "bf16, initial state, varlen"
    h, f = linear_scan_triton(leaf(1, 8, 40), leaf(1, 8, 40), leaf(2, 8, dtype=f32), True,
                              torch.tensor([0, 10, 40]))
    (h.float().sum() + f.sum()).backward()

    CONFIG[0] = "bf16, silu, initial and final state, varlen"
    y, f = causal_conv1d_triton(leaf(1, 8, 40), leaf(8, 4, dtype=f32), leaf(8, dtype=f32),
                                "silu", leaf(2, 8, 3), True, torch.tensor([0, 10, 40]))
    (y.float().sum() + f.float().sum()).backward()

    CONFIG[0] = "bf16 input, fp32 state, zoh, all features"
    selective_state_update_triton(torch.zeros(2, 8, 4), torch.zeros(2, 8, dtype=torch.bfloat16),
                                  torch.zeros(2, 8, dtype=torch.bfloat16), torch.zeros(8, 4),
                                  torch.zeros(2, 2, 4), torch.zeros(2, 2, 4), torch.zeros(8),
                                  torch.zeros(2, 8), torch.zeros(8), True, "zoh")

    # ssd_scan (Mamba-2, and Mamba-3's triton backend on top of it), whose wrapper runs every
    # dtype in float32: x (b, l, h, p), log_decay (b, l, h), B/C (b, l, g, n), initial
    # states (s, h, p, n). d_state 64 only: at 128 ptxas alone takes ~7 minutes on this
    # 2-core machine for the backward kernel (it spills), too long for the suite.
    CONFIG[0] = "d_state 64, groups, initial and final state, varlen"
    y, fin = ssd_scan_triton(leaf(1, 100, 4, 64, dtype=f32), leaf(1, 100, 4, dtype=f32),
                             leaf(1, 100, 2, 64, dtype=f32), leaf(1, 100, 2, 64, dtype=f32),
                             leaf(2, 4, 64, 64, dtype=f32), torch.tensor([0, 30, 100]), True)
    (y.sum() + fin.sum()).backward()
    print(json.dumps(RESULTS))


if __name__ == "__main__":
    main()
