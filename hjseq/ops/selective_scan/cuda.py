"""``backend="cuda"``: the hand-written CUDA selective scan in ``csrc/cuda/`` (forward and
backward; block-wide scan over chunks of 2048 steps, 128 threads x 16 items with 16-byte
vector loads, chunk-entry states saved for the backward, dB/dC exchanged through shared
memory before their atomics, zoh/has_z compiled in). Built on first use through
:func:`hjseq.ops._build.load_extension`, only where torch has CUDA, a device is present
and ``nvcc`` is found; otherwise ``load()`` raises
:class:`~hjseq.ops._registry.BackendUnavailable` saying which is missing.

Supported: both schemes, D, z, delta_bias/softplus, groups, initial/final state, fp32,
fp16 and bf16 inputs (fp32 arithmetic). Declined by :func:`supports`: ``cu_seqlens``,
float64, d_state > 256.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .._cuda_common import build, unavailable_reason
from .._registry import BackendUnavailable
from .checks import validate
from ._groups import as4d, from4d, n_groups

MAX_N = 256  # HJSS_MAX_N in csrc/cuda/selective_scan.h
SOURCES = ["cuda/selective_scan.cu", "cuda/selective_scan_binding.cpp"]


def supports(**kw: Any) -> str | None:
    """Reason this call cannot go to the CUDA kernel, or None."""
    if kw.get("cu_seqlens") is not None:
        return "the CUDA kernel has no packed sequences (cu_seqlens); use backend='triton'"
    u, A = kw.get("u"), kw.get("A")
    if u is not None and u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the CUDA kernel takes float32/float16/bfloat16, got {u.dtype}"
    if A is not None and A.dim() == 2 and A.shape[1] > MAX_N:
        return f"the CUDA kernel supports d_state <= {MAX_N}, got {A.shape[1]}"
    return None


def _ext():
    return build("selective_scan_cuda", SOURCES)


class _CudaScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, zoh):
        ext = _ext()
        dt = u.dtype
        u_, delta_ = u.contiguous(), delta.to(dt).contiguous()
        G = n_groups(B, C)  # a 3-D B or C is repeated over the other's groups
        B4, C4 = as4d(B, G).to(dt).contiguous(), as4d(C, G).to(dt).contiguous()
        z_ = z.to(dt).contiguous() if z is not None else None
        A_ = A.float().contiguous()
        D_ = D.float().contiguous() if D is not None else None
        bias_ = delta_bias.float().contiguous() if delta_bias is not None else None
        h0_ = h0.float().contiguous() if h0 is not None else None
        out, hT, states, ypre = ext.forward(u_, delta_, A_, B4, C4, D_, z_, bias_,
                                            bool(delta_softplus), h0_, zoh)
        ctx.save_for_backward(u_, delta_, A_, B4, C4, D_, z_, bias_, states, ypre)
        ctx.meta = (bool(delta_softplus), zoh, delta.dtype, A.dtype, (B.dim(), B.dtype),
                    (C.dim(), C.dtype), None if D is None else D.dtype,
                    None if z is None else z.dtype,
                    None if delta_bias is None else delta_bias.dtype,
                    None if h0 is None else h0.dtype)
        return out, hT

    @staticmethod
    def backward(ctx, dout, dhT):
        u, delta, A, B4, C4, D, z, bias, states, ypre = ctx.saved_tensors
        softplus, zoh, delta_dt, A_dt, B_like, C_like, D_dt, z_dt, bias_dt, h0_dt = ctx.meta
        dout = dout.to(u.dtype).contiguous() if dout is not None else torch.zeros_like(u)
        dhT = dhT.float().contiguous() if dhT is not None else None
        du, ddelta, dA_p, dB, dC, dD_p, dz, dbias_p, dh0 = _ext().backward(
            u, delta, A, B4, C4, D, z, bias, softplus, zoh, states, ypre, dout, dhT)
        return (du, ddelta.to(delta_dt), dA_p.sum(0).to(A_dt), from4d(dB, *B_like),
                from4d(dC, *C_like), dD_p.sum(0).to(D_dt) if D_dt is not None else None,
                dz.to(z_dt) if z_dt is not None else None,
                dbias_p.sum(0).to(bias_dt) if bias_dt is not None else None,
                None, dh0.to(h0_dt) if h0_dt is not None else None, None)


def selective_scan_cuda(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Tensor | None = None, z: Tensor | None = None,
                        delta_bias: Tensor | None = None, delta_softplus: bool = False,
                        initial_state: Tensor | None = None, return_final_state: bool = False,
                        scheme: str = "euler_b", cu_seqlens: Tensor | None = None):
    """CUDA selective scan; arguments, shapes and results as ``selective_scan_ref``
    (u, delta, z (B, D, L); A (D, N); B, C (B, N, L) | (B, G, N, L); D, delta_bias (D,);
    initial_state (B, D, N)). Returns y (B, D, L) in u's dtype [and the fp32 final state]."""
    validate(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state,
             scheme=scheme, cu_seqlens=cu_seqlens)
    reason = supports(u=u, A=A, cu_seqlens=cu_seqlens)
    if reason:
        raise BackendUnavailable(f"selective_scan backend 'cuda': {reason}")
    y, hT = _CudaScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                              initial_state, scheme == "zoh")
    return (y, hT) if return_final_state else y


def load() -> Callable:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    _ext()  # build now, so that a failure shows here as BackendUnavailable
    return selective_scan_cuda
