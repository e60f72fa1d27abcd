"""Compile every hjseq Triton kernel for a real GPU target (sm_80) without a GPU.

Run as a script in a process WITHOUT TRITON_INTERPRET (so ``triton.jit`` builds real
kernels), with the wrappers' CUDA launch configurations. Each kernel object in the backends is replaced by a shim that, when the Python
wrapper launches it, compiles it through Triton's full pipeline (to a cubin, with Triton's
bundled ptxas) for the argument types of that launch instead of running it. The wrappers
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
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", int(sys.argv[1]) if len(sys.argv) > 1 else 80, 32)
TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16",
         torch.float16: "fp16", torch.int32: "i32", torch.int64: "i64"}
RESULTS: list[dict] = []
CONFIG = [""]


class CompileOnLaunch:
    def __init__(self, name: str, fn: JITFunction):
        self.name, self.fn = name, fn

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
            values = dict(zip(self.fn.arg_names, args), **kwargs)
            sig, consts = {}, {}
            for i, (name, p) in enumerate(zip(self.fn.arg_names, self.fn.params)):
                v = values[name]
                if p.is_constexpr:
                    sig[name], consts[(i,)] = "constexpr", v
                elif torch.is_tensor(v):
                    sig[name] = "*" + TYPES[v.dtype]
                else:
                    sig[name] = "i32" if -2**31 <= int(v) < 2**31 else "i64"
            try:
                triton.compile(ASTSource(fn=self.fn, signature=sig, constexprs=consts),
                               target=TARGET, options=opts)
                RESULTS.append(dict(kernel=self.name, config=CONFIG[0], ok=True, error=""))
            except Exception as e:  # report every failure, keep compiling the others
                RESULTS.append(dict(kernel=self.name, config=CONFIG[0], ok=False,
                                    error=f"{type(e).__name__}: {e}"[-3000:]))
        return launch


def install() -> None:
    """Shim every kernel, and make the wrappers pick their CUDA launch configurations
    (tile sizes, warps) although the tensors are on the CPU."""
    cuda = torch.device("cuda")
    ss = importlib.import_module("hjseq.ops.selective_scan.triton")
    ss._on_gpu = lambda t: True
    for op in ("linear_scan", "causal_conv1d"):
        mod = importlib.import_module(f"hjseq.ops.{op}.triton")
        mod._config = (lambda cfg: lambda length, dim, device: cfg(length, dim, cuda))(mod._config)
    for op in ("selective_scan", "linear_scan", "causal_conv1d", "selective_state_update"):
        mod = importlib.import_module(f"hjseq.ops.{op}.triton")
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                setattr(mod, name, CompileOnLaunch(f"{op}.{name}", obj))


def leaf(*shape, dtype=torch.bfloat16):
    return torch.zeros(*shape, dtype=dtype).requires_grad_()


def main() -> None:
    install()
    from hjseq.ops.causal_conv1d.triton import causal_conv1d_triton
    from hjseq.ops.linear_scan.triton import linear_scan_triton
    from hjseq.ops.selective_scan.triton import selective_scan_triton
    from hjseq.ops.selective_state_update.triton import selective_state_update_triton
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
    print(json.dumps(RESULTS))


if __name__ == "__main__":
    main()
