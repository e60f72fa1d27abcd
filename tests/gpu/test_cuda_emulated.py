"""The CUDA kernels (csrc/cuda/selective_scan.cu, linear_scan.cu), executed without a GPU:
tests/gpu/cuda_emulation/emulate.cpp compiles the kernel source as host C++ and runs each
CUDA block as 128 CPU threads (barriers for __syncthreads and warp shuffles). Forward and
backward are compared with the float64 reference: outputs, final state and every gradient,
over two chunks of 2048 steps, with groups, D, z, delta_bias/softplus, initial state, every
(zoh, has_z) template instance, fp32, fp16 and bf16, rows that take the 16-byte vector
path (L a multiple of 16) and rows that do not; the linear scan likewise over three
chunks. The emulated atomics also count the 32-byte sectors each warp-wide atomicAdd
touches (coalescing of the dB/dC atomics). The parameter packing
mirrors the bindings in csrc/cuda/*_binding.cpp."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from _gpu_testutil import leaf, max_err, ref_backend, rel_rms

ROOT = Path(__file__).resolve().parents[2]
def _cuda_include() -> Path:
    """The CUDA toolkit's include dir: CUDA_HOME, next to nvcc (link or target), or
    /usr/local/cuda -- the first that has cuda_runtime.h."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands += [Path(nvcc).parent.parent, Path(nvcc).resolve().parent.parent]
    cands.append("/usr/local/cuda")
    for c in cands:
        if c and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return Path(c) / "include"
    return Path("/usr/local/cuda/include")


CUDA_INC = _cuda_include()
CHUNK = 2048  # HJSS_CHUNK = 128 threads x 16 items


class Params(ctypes.Structure):
    """Mirror of HJSSParams in csrc/cuda/selective_scan.h (same field order)."""
    _fields_ = ([(n, ctypes.c_int) for n in (
        "batch", "dim", "seqlen", "dstate", "n_groups", "n_chunks", "dtype", "zoh",
        "delta_softplus", "has_D", "has_z", "has_bias", "has_h0", "has_dhT")]
        + [(n, ctypes.c_void_p) for n in (
            "u", "delta", "z", "B", "C", "A", "D", "bias", "h0", "out", "ypre", "hT", "states",
            "dout", "dhT", "du", "ddelta", "dz", "dB", "dC", "dA_part", "dD_part",
            "dbias_part", "dh0")])


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None or not (CUDA_INC / "cuda_runtime.h").is_file():
        pytest.skip(f"needs g++ and the CUDA headers ({CUDA_INC}) to emulate the kernels")
    so = tmp_path_factory.mktemp("emu") / "emu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", f"-I{CUDA_INC}",
           f"-I{ROOT / 'csrc'}", str(ROOT / "tests/gpu/cuda_emulation/emulate.cpp"), "-o", str(so)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    lib = ctypes.CDLL(str(so))
    lib.emu_forward.argtypes = lib.emu_backward.argtypes = [ctypes.POINTER(Params)]
    lib.emu_atomic_sectors_per_warp_op.restype = ctypes.c_double
    return lib


def _ptr(t):
    return None if t is None else t.data_ptr()


def emulated_scan(lib, u, delta, A, B, C, D, z, bias, h0, dout, dhT, zoh, softplus=True):
    """Forward + backward through the emulated kernels; returns (y, hT, grads dict).
    D, z, bias, h0, dhT may be None (the kernel's flags then switch them off)."""
    bsz, dim, L = u.shape
    N, G = A.shape[1], B.shape[1]
    dt = u.dtype
    code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dt]
    n_chunks = -(-L // CHUNK)
    f32 = dict(dtype=torch.float32)
    out, ypre = torch.empty_like(u), torch.empty_like(u)
    hT = torch.empty(bsz, dim, N, **f32)
    states = torch.empty(bsz, dim, n_chunks, N, **f32)
    du, ddelta, dz = torch.empty_like(u), torch.empty_like(u), torch.empty_like(u)
    dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
    dA_p, dh0 = torch.empty(bsz, dim, N, **f32), torch.empty(bsz, dim, N, **f32)
    dD_p, dbias_p = torch.empty(bsz, dim, **f32), torch.empty(bsz, dim, **f32)
    p = Params(batch=bsz, dim=dim, seqlen=L, dstate=N, n_groups=G, n_chunks=n_chunks,
               dtype=code, zoh=int(zoh), delta_softplus=int(softplus), has_D=D is not None,
               has_z=z is not None, has_bias=bias is not None, has_h0=h0 is not None,
               has_dhT=dhT is not None)
    if z is None:
        ypre = dz = None
    for name, t in dict(u=u, delta=delta, z=z, B=B, C=C, A=A, D=D, bias=bias, h0=h0, out=out,
                        ypre=ypre, hT=hT, states=states, dout=dout, dhT=dhT, du=du,
                        ddelta=ddelta, dz=dz, dB=dB, dC=dC, dA_part=dA_p, dD_part=dD_p,
                        dbias_part=dbias_p, dh0=dh0).items():
        assert t is None or t.is_contiguous(), name
        setattr(p, name, _ptr(t))
    assert lib.emu_forward(ctypes.byref(p)) == 0
    assert lib.emu_backward(ctypes.byref(p)) == 0
    grads = dict(u=du, delta=ddelta, A=dA_p.sum(0), B=dB, C=dC, D=dD_p.sum(0), z=dz,
                 delta_bias=dbias_p.sum(0), initial_state=dh0)
    return out, hT, grads


@pytest.mark.parametrize("scheme", ["euler_b", "zoh"])
def test_cuda_kernels_without_optional_inputs(emu, scheme):
    """No D, z, delta_bias, softplus, initial or final-state gradient: the flag-off paths
    (null pointers, has_z = false instances) of both kernels, one partial chunk, a single
    group; L = 304 is a multiple of 16, so rows take the 16-byte vector loads and stores."""
    g = torch.Generator().manual_seed(1)
    L = 304
    u, dout = torch.randn(2, 3, L, generator=g), torch.randn(2, 3, L, generator=g)
    delta = torch.rand(2, 3, L, generator=g) * 0.5
    B, C = torch.randn(2, 1, 4, L, generator=g), torch.randn(2, 1, 4, L, generator=g)
    A = -torch.rand(3, 4, generator=g) - 0.05
    y, hT, grads = emulated_scan(emu, u, delta, A, B, C, None, None, None, None, dout, None,
                                 zoh=scheme == "zoh", softplus=False)
    x = {k: leaf(v.double()) for k, v in dict(u=u, delta=delta, A=A, B=B, C=C).items()}
    y_ref, h_ref = ref_backend("selective_scan")(**x, return_final_state=True, scheme=scheme)
    ref_grads = dict(zip(x, torch.autograd.grad((y_ref * dout.double()).sum(), list(x.values()))))
    assert rel_rms(y, y_ref) < 2e-5 and rel_rms(hT, h_ref) < 2e-5
    for name, gr in ref_grads.items():
        assert rel_rms(grads[name], gr) < 2e-5, (name, rel_rms(grads[name], gr))


def test_cuda_backward_atomics_are_coalesced(emu):
    """dB/dC are exchanged through shared memory before the atomics: a warp's 32 atomics
    hit 32 consecutive floats, 4 sectors of 32 bytes (each thread owning 16 consecutive
    steps would make it 32 sectors)."""
    g = torch.Generator().manual_seed(2)
    L = 2 * 1024
    u, dout = torch.randn(1, 1, L, generator=g), torch.randn(1, 1, L, generator=g)
    delta = torch.rand(1, 1, L, generator=g) * 0.5
    B, C = torch.randn(1, 1, 2, L, generator=g), torch.randn(1, 1, 2, L, generator=g)
    A = -torch.rand(1, 2, generator=g) - 0.05
    emulated_scan(emu, u, delta, A, B, C, None, None, None, None, dout, None, zoh=False,
                  softplus=False)
    assert 0 < emu.emu_atomic_sectors_per_warp_op() <= 4.0


@pytest.mark.parametrize("scheme,dtype,tol,L", [("euler_b", torch.float32, 2e-5, CHUNK + 77),
                                                ("zoh", torch.float32, 2e-5, CHUNK + 77),
                                                ("zoh", torch.float16, 2e-3, CHUNK + 96),
                                                ("zoh", torch.bfloat16, 2e-2, CHUNK + 77)])
def test_cuda_kernels_match_reference(emu, scheme, dtype, tol, L):
    """Two chunks, the second partial; L odd (only the first row is 16-byte aligned: the
    element-wise path) or a multiple of 16 (vector loads and stores throughout)."""
    g = torch.Generator().manual_seed(0)
    bsz, dim, N, G = 1, 2, 3, 2

    def r(*s, scale=1.0, dt=dtype):
        return (torch.randn(*s, generator=g) * scale).to(dt)

    u, delta, z = r(bsz, dim, L), r(bsz, dim, L, scale=0.5), r(bsz, dim, L)
    B, C = r(bsz, G, N, L), r(bsz, G, N, L)
    A = -torch.rand(dim, N, generator=g) - 0.05
    D, bias, h0 = r(dim, dt=torch.float32), r(dim, scale=0.3, dt=torch.float32), r(
        bsz, dim, N, dt=torch.float32)
    dout, dhT = r(bsz, dim, L), r(bsz, dim, N, dt=torch.float32)
    y, hT, grads = emulated_scan(emu, u, delta, A, B, C, D, z, bias, h0, dout, dhT,
                                 scheme == "zoh")
    # float64 reference on the same (rounded) inputs
    x = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias, initial_state=h0)
    x = {k: leaf(v.double()) for k, v in x.items()}
    y_ref, h_ref = ref_backend("selective_scan")(**x, delta_softplus=True,
                                                 return_final_state=True, scheme=scheme)
    loss = (y_ref * dout.double()).sum() + (h_ref * dhT.double()).sum()
    ref_grads = dict(zip(x, torch.autograd.grad(loss, list(x.values()))))
    assert rel_rms(y, y_ref) < tol and rel_rms(hT, h_ref) < tol
    for name, gr in ref_grads.items():
        assert rel_rms(grads[name], gr) < tol, (name, rel_rms(grads[name], gr))
    if dtype == torch.float32:
        assert max_err(y, y_ref) < 1e-3 * max(1.0, y_ref.abs().max().item())


class LinParams(ctypes.Structure):
    """Mirror of HJLSParams in csrc/cuda/linear_scan.h (same field order)."""
    _fields_ = ([(n, ctypes.c_int) for n in (
        "batch", "dim", "seqlen", "n_chunks", "dtype", "has_h0", "has_dhT")]
        + [(n, ctypes.c_void_p) for n in (
            "a", "b", "h0", "out", "hT", "states", "dout", "dhT", "da", "db", "dh0")])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_cuda_linear_scan_matches_reference(emu, dtype, tol):
    g = torch.Generator().manual_seed(0)
    bsz, dim, L = 2, 2, 2 * CHUNK + 5  # three chunks
    a = (torch.rand(bsz, dim, L, generator=g) * 0.5 + 0.5).to(dtype)
    b, dout = (torch.randn(bsz, dim, L, generator=g).to(dtype) for _ in range(2))
    h0, dhT = (torch.randn(bsz, dim, generator=g) for _ in range(2))
    n_chunks = -(-L // CHUNK)
    out, da, db = torch.empty_like(b), torch.empty_like(b), torch.empty_like(b)
    hT, dh0 = torch.empty(bsz, dim), torch.empty(bsz, dim)
    states = torch.empty(bsz, dim, n_chunks)
    p = LinParams(batch=bsz, dim=dim, seqlen=L, n_chunks=n_chunks,
                  dtype={torch.float32: 0, torch.bfloat16: 2}[dtype], has_h0=1, has_dhT=1)
    for name, t in dict(a=a, b=b, h0=h0, out=out, hT=hT, states=states, dout=dout, dhT=dhT,
                        da=da, db=db, dh0=dh0).items():
        setattr(p, name, t.data_ptr())
    emu.emu_linear_forward.argtypes = emu.emu_linear_backward.argtypes = [ctypes.POINTER(LinParams)]
    assert emu.emu_linear_forward(ctypes.byref(p)) == 0
    assert emu.emu_linear_backward(ctypes.byref(p)) == 0
    x = {k: leaf(v.double()) for k, v in dict(a=a, b=b, initial_state=h0).items()}
    h_ref, f_ref = ref_backend("linear_scan")(**x, return_final_state=True)
    loss = (h_ref * dout.double()).sum() + (f_ref * dhT.double()).sum()
    ga, gb, gh0 = torch.autograd.grad(loss, list(x.values()))
    for name, got, want in (("h", out, h_ref), ("final", hT, f_ref), ("da", da, ga),
                            ("db", db, gb), ("dh0", dh0, gh0)):
        assert rel_rms(got, want) < tol, (name, rel_rms(got, want))
