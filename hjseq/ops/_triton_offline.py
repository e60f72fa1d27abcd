"""Compile hjseq's Triton kernels for a real GPU target on a machine without a GPU.

In a process WITHOUT ``TRITON_INTERPRET`` (so ``triton.jit`` builds real kernels), every
``*_kernel`` of the named ops' ``triton`` modules is replaced by :class:`CompileOnLaunch`.
When a Python wrapper then launches a kernel (called with small CPU tensors whose values
are never read), the kernel is compiled through Triton's full pipeline for the argument
types and constexprs of that launch instead of being run. Used by the GPU compile test
(tests/gpu) and the register report of ``benchmarks/bench_gpu.py``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import torch

TRITON_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16",
                torch.float16: "fp16", torch.int32: "i32", torch.int64: "i64"}

# (kernel name, launch options {num_warps, num_stages}, compiled kernel or None, error or None)
OnCompiled = Callable[[str, dict, Any, "Exception | None"], None]


class CompileOnLaunch:
    """``kernel[grid](*args, **kwargs)`` compiles ``fn`` for ``target`` and calls
    ``on_compiled(name, options, compiled, error)``; nothing runs."""

    def __init__(self, name: str, fn: Any, target: Any, on_compiled: OnCompiled) -> None:
        self.name, self.fn, self.target, self.on_compiled = name, fn, target, on_compiled

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        import triton
        from triton.compiler import ASTSource

        def launch(*args: Any, **kwargs: Any) -> None:
            opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
            values = dict(zip(self.fn.arg_names, args), **kwargs)
            sig, consts = {}, {}
            for i, (name, p) in enumerate(zip(self.fn.arg_names, self.fn.params)):
                v = values[name]
                if p.is_constexpr:
                    sig[name], consts[(i,)] = "constexpr", v
                elif torch.is_tensor(v):
                    sig[name] = "*" + TRITON_TYPES[v.dtype]
                else:
                    sig[name] = "i32" if -2**31 <= int(v) < 2**31 else "i64"
            try:
                compiled = triton.compile(ASTSource(fn=self.fn, signature=sig, constexprs=consts),
                                          target=self.target, options=opts)
            except Exception as e:  # report every failure, keep compiling the others
                self.on_compiled(self.name, opts, None, e)
            else:
                self.on_compiled(self.name, opts, compiled, None)
        return launch


def install(ops: Sequence[str], arch: int, on_compiled: OnCompiled) -> None:
    """Shim every kernel of ``hjseq.ops.<op>.triton`` for ``op`` in ``ops`` (compiling for
    sm_``arch``), and make the wrappers pick their CUDA launch configurations (tile sizes,
    warps) although the tensors are on the CPU."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    target = GPUTarget("cuda", arch, 32)
    cuda = torch.device("cuda")
    ss = importlib.import_module("hjseq.ops.selective_scan.triton")
    ss._on_gpu = lambda t: True
    for op in ("linear_scan", "causal_conv1d"):
        mod = importlib.import_module(f"hjseq.ops.{op}.triton")
        mod._config = (lambda cfg: lambda length, dim, device: cfg(length, dim, cuda))(mod._config)
    for op in ops:
        mod = importlib.import_module(f"hjseq.ops.{op}.triton")
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                setattr(mod, name, CompileOnLaunch(f"{op}.{name}", obj, target, on_compiled))
