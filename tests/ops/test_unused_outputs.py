"""A loss that reads only some of an op's outputs: the C++ ops' backwards receive None for
the others (they skip autograd's zero tensors, ``_autograd.intermediates_for_backward``) and
must still give the reference's gradients, in float64; and the CPU block cache
(``csrc/cpu/block_cache.h``) behind the ssd and mamba3_siso kernels: blocks are reused,
capped, released, and its tensors behave as any other."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from _utils import assert_close
from test_mamba3_siso import _inputs as mamba3_inputs
from test_mamba3_siso import _leaves as mamba3_leaves
from test_recurrent_scan import _inputs as recurrent_inputs
from test_ssd import _scan_inputs

import hjseq.ops as ops
from hjseq.ops._registry import available


def _cpu(op: str) -> None:
    if available(op, "cpu").get("cpu") is not None:
        pytest.fail(f"{op}: cpu backend unavailable: {available(op, 'cpu')['cpu']}")


def _grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of ⟨out, G⟩ for a fixed random G; an input that does not reach out (the
    gate Z when only a final state is read) has gradient zero."""
    G = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    gs = torch.autograd.grad((out.double() * G).sum(), inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


def _each_output_alone(run, inputs: list[torch.Tensor], n_out: int, name: str) -> None:
    """For each output k alone, the cpu backend's gradients equal the reference's."""
    for k in range(n_out):
        grads = {backend: _grads(run(backend)[k], inputs) for backend in ("ref", "cpu")}
        for i, (r, c) in enumerate(zip(grads["ref"], grads["cpu"])):
            assert_close(r, c, 1e-10, f"{name}: loss on output {k} only, grad #{i}")


def test_ssd_scan_one_output_at_a_time():
    _cpu("ssd_scan")
    ins = _scan_inputs(2, 19, 4, 3, 2, 5)
    x, ld, B, C, S0 = ins
    run = lambda backend: ops.ssd_scan(x, ld, B, C, S0, return_final_states=True,  # noqa: E731
                                       chunk_size=8, backend=backend)
    _each_output_alone(run, ins, 2, "ssd_scan")


def test_mamba3_siso_one_output_at_a_time():
    _cpu("mamba3_siso")
    ins = mamba3_inputs()
    run = lambda backend: mamba3_siso_all(ins, backend)  # noqa: E731
    _each_output_alone(run, mamba3_leaves(ins), 5, "mamba3_siso")


def mamba3_siso_all(ins, backend):
    y, *fin = ops.mamba3_siso(**ins, chunk_size=8, return_final_states=True, backend=backend)
    return [y, *fin]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_scan_one_output_at_a_time(cell):
    _cpu("recurrent_scan")
    kw = recurrent_inputs(cell)
    outs = lambda backend: [t for t in ops.recurrent_scan(cell, **kw, dt=0.3,  # noqa: E731
                                                          backend=backend) if t is not None]
    _each_output_alone(outs, [v for v in kw.values() if v is not None],
                       3 if cell == "lstm" else 2, f"recurrent_scan {cell}")


def test_selective_scan_one_output_at_a_time():
    _cpu("selective_scan")
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    kw = dict(u=r(2, 6, 30), delta=0.5 * r(2, 6, 30) - 0.5, A=-(0.2 + r(6, 4).abs()),
              B=r(2, 4, 30), C=r(2, 4, 30), D=r(6), z=r(2, 6, 30), initial_state=r(2, 6, 4))
    kw = {k: v.requires_grad_() for k, v in kw.items()}
    run = lambda backend: list(ops.selective_scan(**kw, return_final_state=True,  # noqa: E731
                                                  backend=backend))
    _each_output_alone(run, list(kw.values()), 2, "selective_scan")


# ---- the block cache -------------------------------------------------------------------

def _big_scan(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # y is (1, 512, 8, 64) float32: 1 MiB, the cache's smallest block
    x = torch.randn(1, 512, 8, 64, generator=g)
    ld = -torch.rand(1, 512, 8, generator=g)
    B, C = torch.randn(1, 512, 8, 16, generator=g), torch.randn(1, 512, 8, 16, generator=g)
    return x, ld, B, C


def test_block_cache_reuses_freed_blocks_and_releases_them():
    _cpu("ssd_scan")
    args = _big_scan()
    ops.empty_cpu_cache()  # only this test's block of y's size is cached below
    y = ops.ssd_scan(*args, backend="cpu")
    ptr, expect = y.data_ptr(), y.clone()
    del y  # its block goes back to the cache...
    assert ops.cpu_cache_bytes() >= 1 << 20
    y2 = ops.ssd_scan(*args, backend="cpu")
    assert y2.data_ptr() == ptr  # ...and is handed out again, with every element rewritten
    torch.testing.assert_close(y2, expect, rtol=0, atol=0)
    del y2
    freed = ops.empty_cpu_cache()
    assert freed >= 1 << 20 and ops.cpu_cache_bytes() == 0


def test_block_cache_tensors_behave_like_any_other(tmp_path):
    _cpu("ssd_scan")
    y = ops.ssd_scan(*_big_scan(), backend="cpu")
    expect = y.clone()
    torch.save(y, tmp_path / "y.pt")
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expect, rtol=0, atol=0)
    y.resize_(2 * y.numel())  # grows through the cache's allocator, keeping the data
    torch.testing.assert_close(y[: expect.numel()].view_as(expect), expect, rtol=0, atol=0)
    y.share_memory_()
    torch.testing.assert_close(y[: expect.numel()].view_as(expect), expect, rtol=0, atol=0)


def test_block_cache_off_keeps_nothing():
    code = ("import hjseq.ops as o, torch; g = torch.Generator().manual_seed(0);"
            "x = torch.randn(1, 512, 8, 64, generator=g); ld = -torch.rand(1, 512, 8);"
            "B = torch.randn(1, 512, 8, 16); y = o.ssd_scan(x, ld, B, B, backend='cpu');"
            "del y; print(o.cpu_cache_bytes())")
    env = {**os.environ, "HJSEQ_CPU_CACHE_MB": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0"


def test_block_cache_stays_under_its_limit_and_drops_stale_sizes():
    """With a 3 MiB limit: blocks of 1 and 2 MiB are cached; freeing a 3 MiB block evicts
    both (the largest first), and the 3 MiB block serves a later request of that size and
    one slightly smaller."""
    code = """
import hjseq.ops as o, torch
def y(L):  # the scan's output is (1, L, 8, 64) float32: L / 512 MiB
    x = torch.randn(1, L, 8, 64); B = torch.randn(1, L, 8, 16)
    return o.ssd_scan(x, -torch.rand(1, L, 8), B, B, backend='cpu')
a = y(512); del a
b = y(1024); del b
print(o.cpu_cache_bytes())
c = y(1536); ptr = c.data_ptr(); del c
print(o.cpu_cache_bytes())
d = y(1536); print(int(d.data_ptr() == ptr)); del d
e = y(1500); print(int(e.data_ptr() == ptr))
"""
    env = {**os.environ, "HJSEQ_CPU_CACHE_MB": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    mib = 1 << 20
    assert out.stdout.split()[-4:] == [str(3 * mib), str(3 * mib), "1", "1"], out.stdout
