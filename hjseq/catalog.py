"""What hjseq ships, registered in one place at ``import hjseq``: the closed-form kernels
(each for the exact Hamiltonian, scheme and block it was written for) and the block kinds
an ``HJLM`` config can name. Nothing else registers as a side effect of an import, so
results never depend on import order.

Everything not listed here reaches a fused kernel through the structure its spec declares
(``affine`` → ``linear_scan``, ``head_affine`` → ``ssd``; see ``hjseq.engine.fused_path``)
or runs the engine's reference loop.
"""
from __future__ import annotations

from .engine import register_kernel
from .hamiltonians import GRU, LSTM, ElmanRNN, LinearSSM
from .models.kinds import register_block
from .models.lm import LSEMLP, AttentionMixer
from .nn.attention import POSITIONS
from .nn.base import recurrent_scan_kernel
from .nn.gru import HJGRU
from .nn.lstm import HJLSTM
from .nn.mamba2 import HJMamba2
from .nn.mamba3 import HJMamba3, RotatingSSM, mamba3_kernel
from .nn.retention import HJRetention
from .nn.rnn import HJRNN
from .nn.ssm import HJMamba, selective_scan_kernel

# ---------------------------------------------------------------- closed-form kernels
register_kernel(ElmanRNN, "euler", HJRNN, recurrent_scan_kernel(HJRNN.CELL))
register_kernel(GRU, "gated_euler", HJGRU, recurrent_scan_kernel(HJGRU.CELL))
register_kernel(LSTM, "euler", HJLSTM, recurrent_scan_kernel(HJLSTM.CELL))
register_kernel(LinearSSM, "euler_b", HJMamba, selective_scan_kernel)
register_kernel(LinearSSM, "zoh", HJMamba, selective_scan_kernel)
register_kernel(RotatingSSM, "euler_b", HJMamba3, mamba3_kernel)
register_kernel(RotatingSSM, "exp_trapezoidal", HJMamba3, mamba3_kernel)

# ---------------------------------------------------------------- block kinds
_RECURRENT_OPTS = {
    "hidden_size": ((int,), "state size (default d_model); projected back to d_model"),
    "bias": ((bool,), "bias terms in the cell"),
    "dt": ((float,), "Euler step of the HJ characteristic flow (1.0 = the torch cell)"),
    "eps": ((float,), "viscosity: noise sqrt(2 eps dt) on the state while training"),
    "backend": ((str,), "backend: auto | loop | ref | native | cpu | triton | cuda"),
}
for _kind, _cls in (("rnn", HJRNN), ("gru", HJGRU), ("lstm", HJLSTM)):
    register_block(_kind, _cls, options=dict(_RECURRENT_OPTS))

register_block("mamba", HJMamba, aliases=("ssm",), options={
    "d_state": ((int,), "SSM state size N"),
    "d_conv": ((int,), "causal depthwise conv width"),
    "expand": ((int, float), "inner width = expand * d_model"),
    "dt_rank": ((int, str), "rank of the time-step projection, or 'auto'"),
    "scheme": ((str,), "discretization: 'euler_b' (Mamba's), 'zoh', or another scheme "
                       "LinearSSM takes"),
    "conv_bias": ((bool,), "bias in the causal conv"),
    "bias": ((bool,), "bias in in_proj/out_proj"),
    "dt_min": ((float,), "time-step init range, lower end"),
    "dt_max": ((float,), "time-step init range, upper end"),
    "backend": ((str,), "selective-scan backend"),
})


def _attention(d_model: int, o: dict) -> AttentionMixer:
    heads = o.pop("n_heads", max(1, d_model // 64))
    o.setdefault("pos", "rope")  # HJLM attention blocks are rotary unless a config says "none"
    return AttentionMixer(d_model, heads, causal=True, **o)


register_block("attention", AttentionMixer, build=_attention, options={
    "n_heads": ((int,), "number of heads (must divide d_model)"),
    "eps": ((float, type(None)), "temperature; default sqrt(d_head) = softmax attention"),
    "bias": ((bool,), "biases in the q/k/v/out projections"),
    "pos": ((str,), f"positions: {' | '.join(POSITIONS)} (default rope: rotary; none = NoPE)"),
    "rope_base": ((float,), "base of the rotary frequencies (default 10000)"),
})

register_block("lse", LSEMLP, options={
    "n_units": ((int,), "number of LSE units (default 2 * d_model)"),
    "n_atoms": ((int,), "atoms per unit (default 4)"),
    "eps": ((float,), "temperature (viscosity); 0 = tropical max"),
})

register_block("mamba2", HJMamba2, options={
    "d_state": ((int,), "state size N per head"),
    "d_conv": ((int,), "causal depthwise conv width"),
    "expand": ((int, float), "inner width = expand * d_model"),
    "headdim": ((int,), "head size P (heads = d_ssm / headdim)"),
    "d_ssm": ((int, type(None)), "channels through the SSM (default: all); the rest is a gated MLP"),
    "ngroups": ((int,), "B/C groups (must divide the number of heads)"),
    "D_has_hdim": ((bool,), "skip D per channel instead of per head"),
    "rmsnorm": ((bool,), "gated RMSNorm before out_proj (else y * silu(z))"),
    "norm_before_gate": ((bool,), "normalize y before the silu(z) gate"),
    "norm_eps": ((float,), "epsilon of the gated RMSNorm"),
    "dt_limit": ((list, tuple), "[lo, hi]: clamp of the step softplus(dt + dt_bias)"),
    "scheme": ((str,), "discretization: 'euler_b' (Mamba-2's), 'zoh', or another scheme "
                       "HeadLinearSSM takes"),
    "eps": ((float,), "viscosity: noise sqrt(2 eps dt) on the state while training"),
    "conv_bias": ((bool,), "bias in the causal conv"),
    "bias": ((bool,), "bias in in_proj/out_proj"),
    "chunk_size": ((int,), "chunk of the checkpoint's scan (kept for compatibility)"),
    "dt_min": ((float,), "time-step init range, lower end"),
    "dt_max": ((float,), "time-step init range, upper end"),
    "backend": ((str,), "ssd_scan backend"),
})

register_block("mamba3", HJMamba3, options={
    "d_state": ((int,), "state size N per head"),
    "expand": ((int, float), "inner width = expand * d_model"),
    "headdim": ((int,), "head size P (heads = expand * d_model / headdim)"),
    "ngroups": ((int,), "B/C groups (must divide the number of heads)"),
    "rope_fraction": ((float,), "fraction of the state turned by the data-dependent angles "
                                "(0.5 or 1.0)"),
    "A_floor": ((float,), "a = -max(softplus(dd_A), A_floor)"),
    "is_outproj_norm": ((bool,), "gated RMSNorm before out_proj (else y * silu(z))"),
    "trapezoidal": ((bool,), "Mamba-3's learned trapezoid weight (False: lambda = 1)"),
    "chunk_size": ((int,), "chunk of the mamba3_siso scan"),
    "dt_min": ((float,), "time-step init range, lower end"),
    "dt_max": ((float,), "time-step init range, upper end"),
    "backend": ((str,), "mamba3_siso backend, or 'loop'"),
})

# retention: a 30-line spec on the ssd path; its options are read off its constructor
register_block("retention", HJRetention)
