"""CPU backend of ``selective_scan``: the fused C++ kernel in ``csrc/cpu/selective_scan.cpp``.

Same definition and layouts as ``ref.py``. The kernel runs OpenMP over (batch, group,
block of W channels) with SIMD lanes over channels, one polynomial ``exp`` per state
update fused into the scan, fp32 accumulation (fp64 for fp64 inputs).

Autograd: the forward saves the state entering every chunk of ``CHUNK`` steps,
``(B, L/CHUNK, N, D)``; the backward recomputes each chunk's states from its checkpoint
and runs the adjoint recursion backwards, so it never holds a ``(B, D, L, N)`` tensor.
Both directions are ``torch.library`` custom ops (``hjseq::selective_scan_cpu_fwd`` /
``_bwd``) with fake kernels, so ``torch.compile(fullgraph=True)`` traces through them.
"""
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from .._autograd import intermediates_for_backward
from .._build import DEFAULT_CFLAGS, load_extension
from hjseq.ops._dtypes import accumulation_dtype

#: time steps per checkpoint chunk (backward memory ~ B·D·N·L/CHUNK floats)
CHUNK = 128
_SCHEMES = {"euler_b": 0, "zoh": 1}


def _extension() -> ModuleType:
    # -ffp-contract=fast lets a*b + c become one FMA (-std=c++17 turns that off);
    # load_extension builds once, then returns its cached module
    return load_extension("selective_scan", ["cpu/selective_scan.cpp"],
                          extra_cflags=[*DEFAULT_CFLAGS, "-ffp-contract=fast"])



@torch.library.custom_op("hjseq::selective_scan_cpu_fwd", mutates_args=())
def _fwd(u: Tensor, delta: Tensor, At: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
         z: Optional[Tensor], delta_bias: Optional[Tensor], init_t: Optional[Tensor],
         cu_seqlens: Optional[Tensor], softplus: bool, scheme: int,
         chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel layouts: u, delta, z (B, D, L); At (N, D); B, C (B, G, N, L); init_t
    (nseq, N, D). Returns ``out`` (B, D, L), ``final_t`` (nseq, N, D), checkpoints
    (B, ceil(L/chunk), N, D)."""
    out, final_t, ckpt = _extension().fwd(u, delta, At, B, C, D, z, delta_bias, init_t,
                                          cu_seqlens, softplus, scheme, chunk)
    return out, final_t, ckpt


@_fwd.register_fake
def _fwd_fake(u, delta, At, B, C, D, z, delta_bias, init_t, cu_seqlens, softplus, scheme,
              chunk):
    batch, dim, L = u.shape
    N = At.shape[0]
    nseq = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    acc = accumulation_dtype(u.dtype)
    return (torch.empty_like(u), u.new_empty((nseq, N, dim), dtype=acc),
            u.new_empty((batch, (L + chunk - 1) // chunk, N, dim), dtype=acc))


@torch.library.custom_op("hjseq::selective_scan_cpu_bwd", mutates_args=())
def _bwd(gout: Tensor, gfinal_t: Optional[Tensor], u: Tensor, delta: Tensor, At: Tensor,
         B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
         delta_bias: Optional[Tensor], init_t: Optional[Tensor], cu_seqlens: Optional[Tensor],
         ckpt: Tensor, softplus: bool, scheme: int, chunk: int) -> list[Tensor]:
    """Returns ``[du, ddelta, dAt, dB, dC, dD, dz, ddelta_bias, dinit_t]`` (dz is empty
    without z); parameter gradients in the accumulation dtype."""
    return list(_extension().bwd(gout, gfinal_t, u, delta, At, B, C, D, z, delta_bias, init_t,
                                 cu_seqlens, ckpt, softplus, scheme, chunk))


@_bwd.register_fake
def _bwd_fake(gout, gfinal_t, u, delta, At, B, C, D, z, delta_bias, init_t, cu_seqlens, ckpt,
              softplus, scheme, chunk):
    batch, dim, L = u.shape
    N = At.shape[0]
    nseq = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    acc = accumulation_dtype(u.dtype)
    return [torch.empty_like(u), torch.empty_like(u), At.new_empty((N, dim), dtype=acc),
            B.new_empty(B.shape, dtype=acc), C.new_empty(C.shape, dtype=acc),
            u.new_empty((dim,), dtype=acc),
            torch.empty_like(u) if z is not None else u.new_empty((0,)),
            u.new_empty((dim,), dtype=acc), u.new_empty((nseq, N, dim), dtype=acc)]


def _setup_context(ctx, inputs, output):
    u, delta, At, B, C, D, z, delta_bias, init_t, cu_seqlens, softplus, scheme, chunk = inputs
    ctx.save_for_backward(u, delta, At, B, C, D, z, delta_bias, init_t, cu_seqlens, output[2])
    ctx.flags = (softplus, scheme, chunk)
    intermediates_for_backward(ctx, output[2])


def _backward(ctx, gout, gfinal_t, _gckpt):
    u, delta, At, B, C, D, z, delta_bias, init_t, cu_seqlens, ckpt = ctx.saved_tensors
    softplus, scheme, chunk = ctx.flags
    gout = torch.zeros_like(u) if gout is None else gout.to(u.dtype).contiguous()
    if gfinal_t is not None:
        gfinal_t = gfinal_t.to(At.dtype).contiguous()
    du, ddelta, dAt, dB, dC, dD, dz, dbias, dinit_t = _bwd(
        gout, gfinal_t, u, delta, At, B, C, D, z, delta_bias, init_t, cu_seqlens, ckpt,
        softplus, scheme, chunk)
    return (du, ddelta, dAt, dB, dC, dD if D is not None else None,
            dz if z is not None else None, dbias if delta_bias is not None else None,
            dinit_t if init_t is not None else None, None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_cpu(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                       delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                       initial_state: Optional[Tensor] = None, return_final_state: bool = False,
                       scheme: str = "euler_b", cu_seqlens: Optional[Tensor] = None):
    """Fused CPU selective scan; arguments, shapes and result as ``ref.selective_scan_ref``
    (u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); initial_state and
    final state (nseq, D, N)). Inputs are assumed validated (``checks.py``)."""
    acc = accumulation_dtype(u.dtype)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    opt = lambda t: None if t is None else t.to(acc).contiguous()  # noqa: E731
    init_t = None if initial_state is None else initial_state.to(acc).transpose(1, 2).contiguous()
    out, final_t, _ = _fwd(
        u.contiguous(), delta.contiguous(), A.to(acc).t().contiguous(), B.to(acc).contiguous(),
        C.to(acc).contiguous(), opt(D), None if z is None else z.contiguous(), opt(delta_bias),
        init_t, None if cu_seqlens is None else cu_seqlens.to(torch.int64).contiguous(),
        bool(delta_softplus), _SCHEMES[scheme], CHUNK)
    if return_final_state:
        return out, final_t.transpose(1, 2)
    return out


def load():
    """Build (or reuse) the extension; raises BackendUnavailable if it cannot be built."""
    _extension()
    return selective_scan_cpu
