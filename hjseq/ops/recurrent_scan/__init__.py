"""``recurrent_scan``: the fused nonlinear recurrences (HJRNN / HJGRU / HJLSTM at any Δ),
dispatched to a backend (see hjseq/ops/_registry.py). Definition: ref.py.

Backends: ``native`` (torch's fused ``torch.rnn_tanh/gru/lstm``; Δ = 1 and no noise only),
``cpu`` (C++ time loop: one input GEMM, a per-step BLAS GEMM and a fused pointwise cell;
backward is BPTT in C++), ``ref`` (the Python loop). Auto order on CPU: native, cpu, ref.
"""
from __future__ import annotations

from torch import Tensor

from .._checks import check_scalar, check_tensor
from .._dispatch import dispatch
from .._registry import register, set_auto_order
from .ref import CELLS

OP = "recurrent_scan"
register(OP, "ref", "hjseq.ops.recurrent_scan.ref", devices=("cpu", "cuda"))
register(OP, "native", "hjseq.ops.recurrent_scan.native", devices=("cpu", "cuda"))
register(OP, "cpu", "hjseq.ops.recurrent_scan.cpu", devices=("cpu",))
set_auto_order(OP, "cpu", ("native", "cpu", "ref"))
set_auto_order(OP, "cuda", ("native", "ref"))


def _validate(cell: str, x: Tensor, weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Tensor | None, bias_hh: Tensor | None, h0: Tensor | None,
              c0: Tensor | None, dt: float, noise: Tensor | None) -> float:
    if cell not in CELLS:
        raise ValueError(f"{OP}: cell must be one of {list(CELLS)}, got {cell!r}")
    check_tensor(OP, "x", x, (None, None, None), "(B, L, I)")
    Bsz, L, I = x.shape
    if L < 1:
        raise ValueError(f"{OP}: x must have at least one time step (B, L, I) with L >= 1, "
                         f"got {tuple(x.shape)}")
    if not isinstance(weight_hh, Tensor) or weight_hh.dim() != 2:
        check_tensor(OP, "weight_hh", weight_hh, (None, None), "(G*H, H)")
    H, G = weight_hh.shape[1], CELLS[cell]
    kw = dict(dtype=x.dtype, device=x.device)
    check_tensor(OP, "weight_hh", weight_hh, (G * H, H), f"(G*H, H) with G={G} for {cell}", **kw)
    check_tensor(OP, "weight_ih", weight_ih, (G * H, I), f"(G*H, I) with G={G} for {cell}", **kw)
    for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if bias is not None:
            check_tensor(OP, name, bias, (G * H,), "(G*H,)", **kw)
    if h0 is not None:
        check_tensor(OP, "h0", h0, (Bsz, H), "(B, H)", **kw)
    if c0 is not None:
        if cell != "lstm":
            raise ValueError(f"{OP}: c0 is the LSTM cell state; pass c0=None for cell={cell!r}")
        check_tensor(OP, "c0", c0, (Bsz, H), "(B, H)", **kw)
    if noise is not None:
        check_tensor(OP, "noise", noise, (Bsz, L, H), "(B, L, H)", **kw)
    return check_scalar(OP, "dt", dt, positive=True)


def recurrent_scan(cell: str, x: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                   bias_ih: Tensor | None, bias_hh: Tensor | None, h0: Tensor | None,
                   c0: Tensor | None = None, dt: float = 1.0, noise: Tensor | None = None,
                   backend: str = "auto") -> tuple[Tensor, Tensor, Tensor | None]:
    """Run ``cell`` ∈ {"rnn_tanh", "gru", "lstm"} over x (B, L, I) with step Δ = ``dt``.

    Weights in torch's layout and gate order (LSTM i,f,g,o; GRU r,z,n): weight_ih (G·H, I),
    weight_hh (G·H, H), biases (G·H,) or None; h0, c0 (B, H) or None (zeros); noise
    (B, L, H) already scaled, added after each step (to h; to c for lstm) or None.
    Returns ``(out (B, L, H), h_T (B, H), c_T (B, H) or None)``. At Δ = 1 this is exactly
    torch.nn.RNN/GRU/LSTM (one layer, batch_first). Update rules: see ref.py.
    """
    dt = _validate(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, dt, noise)
    kwargs = dict(cell=cell, x=x, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                  bias_hh=bias_hh, h0=h0, c0=c0, dt=dt, noise=noise)
    return dispatch(OP, backend, x.device.type, kwargs)


__all__ = ["recurrent_scan", "CELLS"]
