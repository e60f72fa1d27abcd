"""The fused decoder (hjseq/models/decode.py, csrc/cpu/decode_step.cpp) against HJLM.step and
the full forward, per dtype and weight format; batched generation and its per-request
settings; the int8/bf16 weight formats."""
from __future__ import annotations

import pytest
import torch

from hjseq.models import HJLM
from hjseq.models.decode import DecodeState, FusedDecoder, NotFusable, try_fused
from hjseq.models.generate import (Request, filter_logits, generate, generate_batch,
                                   sample_rows, stream)
from hjseq.models.quantize import (dequantize_int8, fake_quantize, pack_linear,
                                   quantize_int8, round_weight, validation_bpb)

# Mamba-2 options an HJLM config can set (d_model 12, so d_inner 24): groups; the MLP lanes
# (d_ssm < d_inner), D per channel, norm before the gate, zoh, a short conv without bias,
# in/out_proj biases, a clamped Δ and the norm's ε; no gated norm and a width-1 conv
MAMBA2_BLOCKS = [
    {"kind": "mamba2", "d_state": 4, "headdim": 4, "ngroups": 2},
    {"kind": "mamba2", "d_state": 5, "headdim": 6, "d_ssm": 12, "D_has_hdim": True,
     "norm_before_gate": True, "scheme": "zoh", "d_conv": 2, "conv_bias": False, "bias": True,
     "dt_limit": [0.01, 0.05], "norm_eps": 1e-3},
    {"kind": "mamba2", "d_state": 3, "headdim": 3, "ngroups": 4, "rmsnorm": False, "d_conv": 1}]
BLOCKS = [{"kind": "mamba", "d_state": 4}, {"kind": "mamba", "d_state": 3, "scheme": "zoh",
                                            "d_conv": 2},
          {"kind": "lstm", "dt": 0.7}, {"kind": "gru", "dt": 0.5}, {"kind": "rnn"},
          {"kind": "lse", "n_atoms": 3}, {"kind": "lse", "eps": 0.0}, MAMBA2_BLOCKS[1],
          MAMBA2_BLOCKS[0]]


def _model(dtype=torch.float64, blocks=BLOCKS, seed=0, d=12) -> HJLM:
    torch.manual_seed(seed)
    m = HJLM({"d_model": d, "vocab_size": 256, "blocks": blocks}).to(dtype).eval()
    with torch.no_grad():  # non-trivial norms, D and conv biases
        for name, p in m.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
    return m


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("blocks", [BLOCKS, MAMBA2_BLOCKS], ids=["mixed", "mamba2"])
@pytest.mark.parametrize("dtype,tol,batch", [(torch.float64, 1e-12, 3),
                                             (torch.float64, 1e-12, 9),  # 2 tiles of 4 + 1
                                             (torch.float32, 2e-6, 3)])
def test_fused_step_equals_hjlm_step_and_forward(dtype, tol, batch, blocks):
    m = _model(dtype, blocks)
    dec = FusedDecoder(m)
    ids = torch.randint(0, 256, (batch, 7), generator=torch.Generator().manual_seed(1))
    full = m(ids)                                        # (B, L, V)
    st, ref_state = dec.zero_state(batch), None
    for t in range(ids.shape[1]):
        got = dec.step(ids[:, t], st)
        want, ref_state = m.step(ids[:, t], ref_state)
        assert got.dtype == dtype
        assert _rel(got, want) < tol, t
        assert _rel(got, full[:, t]) < tol * 10, t
    # the state converts back: HJLM.step continues from the fused state
    nxt = torch.arange(1, batch + 1)
    a, _ = m.step(nxt, dec.state_to_model(st))
    b, _ = m.step(nxt, ref_state)
    assert _rel(a, b) < tol


def test_prefill_then_fused_steps_equal_full_forward_varlen():
    m = _model()
    dec = FusedDecoder(m)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 2, 5, 1)]
    cont = torch.randint(0, 256, (4, 3), generator=g)
    logits, st = dec.prefill(m, prompts)
    for i, p in enumerate(prompts):
        assert _rel(logits[i], m(torch.tensor([p]))[0, -1]) < 1e-12
    for t in range(3):
        got = dec.step(cont[:, t], st)
        for i, p in enumerate(prompts):
            want = m(torch.tensor([p + cont[i, :t + 1].tolist()]))[0, -1]
            assert _rel(got[i], want) < 1e-12
    sub = st.select([2, 0])  # rows leave the batch: their states stay theirs
    assert torch.equal(sub.tensors[0][1], st.tensors[0][0])


@pytest.mark.parametrize("blocks", [BLOCKS, MAMBA2_BLOCKS], ids=["mixed", "mamba2"])
@pytest.mark.parametrize("batch", [2, 6])  # converted in the loop / through a row buffer
@pytest.mark.parametrize("fmt", ["bfloat16", "int8"])
def test_weight_formats_compute_the_rounded_model_exactly(fmt, batch, blocks):
    """bf16/int8 weights with fp32 activations = the float64 model whose projection weights
    hold the rounded values (so the only error is the format's, measured separately)."""
    m = _model(torch.float32, blocks)
    dec = FusedDecoder(m, weights=fmt)
    truth = fake_quantize(m, fmt).double()
    ids = torch.randint(0, 256, (batch, 5), generator=torch.Generator().manual_seed(3))
    st, ref = dec.zero_state(batch), None
    for t in range(5):
        got = dec.step(ids[:, t], st)
        want, ref = truth.step(ids[:, t], ref)
        assert _rel(got, want) < 2e-6
    f32 = FusedDecoder(m, weights="float32")
    assert dec.weight_bytes < f32.weight_bytes * (0.6 if fmt == "bfloat16" else 0.45)


@pytest.mark.parametrize("fmt,dtype,tol", [("float64", torch.float64, 1e-14),
                                           ("float32", torch.float32, 1e-6),
                                           ("bfloat16", torch.float32, 1e-6),
                                           ("int8", torch.float32, 1e-6)])
def test_projection_kernels_equal_the_rounded_matmul(fmt, dtype, tol):
    """One projection on its own against x W̃ᵀ + b in float64 (W̃: the format's rounded
    weights): few inputs and many outputs (stored transposed, 20 -> 300) and the row kernel
    (100 -> 30), batch 1 and 5 (a tile of 4 batch rows and a remainder)."""
    from hjseq.models.decode import _ext

    g = torch.Generator().manual_seed(9)
    for n_out, n_in in ((300, 20), (30, 100)):
        w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64).to(dtype)
        bias = torch.randn(n_out, generator=g, dtype=torch.float64).to(dtype)
        packed = pack_linear("p", w, bias, fmt, dtype)
        for batch in (1, 5):
            x = torch.randn(batch, n_in, generator=g, dtype=torch.float64).to(dtype)
            want = x.double() @ round_weight(w, fmt).double().T + bias.double()
            assert _rel(_ext().linear(packed, "p", x), want) < tol, (n_out, n_in, batch)


def test_bf16_model_fused_is_nearer_float64_than_bf16_step():
    m = _model(torch.bfloat16, blocks=[{"kind": "mamba", "d_state": 4}, {"kind": "gru"},
                                       MAMBA2_BLOCKS[0]])
    truth = HJLM(m.config).double().eval()
    truth.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    dec = FusedDecoder(m)  # bf16 weights, fp32 activations and states
    assert dec.weights == "bfloat16"
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(4))
    st, s_bf, s_64 = dec.zero_state(2), None, None
    for t in range(6):
        got = dec.step(ids[:, t], st)
        bf, s_bf = m.step(ids[:, t], s_bf)
        want, s_64 = truth.step(ids[:, t], s_64)
        assert _rel(got, want) < 1e-5
        assert _rel(got, want) <= _rel(bf, want)


def test_int8_quantisation():
    w = torch.randn(7, 33, generator=torch.Generator().manual_seed(5))
    w[3] = 0
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (7,) and int(q.abs().max()) <= 127
    err = (dequantize_int8(q, s) - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-7).all())  # round to nearest, per row
    assert torch.equal(q[3], torch.zeros(33, dtype=torch.int8))
    with pytest.raises(ValueError, match="NaN"):
        quantize_int8(torch.tensor([[float("nan")]]))
    m = _model(torch.float32, blocks=[{"kind": "mamba", "d_state": 4}])
    val = torch.randint(0, 256, (400,), dtype=torch.uint8)
    a = validation_bpb(m, val, seq_len=16, n_windows=4)
    b = validation_bpb(fake_quantize(m, "int8"), val, seq_len=16, n_windows=4)
    assert a > 0 and b > 0 and abs(a - b) < 0.05
    assert m.lm_head.weight is m.embedding.weight  # fake_quantize left the model alone


def test_not_fusable_and_errors():
    m = _model(blocks=[{"kind": "attention", "n_heads": 2}])
    with pytest.raises(NotFusable, match="attention"):
        FusedDecoder(m)
    assert try_fused(m) is None
    f = _model()
    with pytest.raises(ValueError, match="weights must be one of"):
        FusedDecoder(f, weights="int4")
    with pytest.raises(ValueError, match="float64 model decodes with float64"):
        FusedDecoder(f, weights="int8")
    dec = FusedDecoder(f)
    with pytest.raises(ValueError, match="batch 2 but the state has 3"):
        dec.step(torch.tensor([1, 2]), dec.zero_state(3))
    with pytest.raises(RuntimeError, match="outside"):
        dec.step(torch.tensor([256]), dec.zero_state(1))
    # a Mamba-2 scheme without a fused step: named; generation falls back to HJLM.step
    e = _model(blocks=[{"kind": "mamba2", "d_state": 4, "headdim": 4, "scheme": "euler"}])
    with pytest.raises(NotFusable, match="scheme='euler'"):
        FusedDecoder(e)
    assert try_fused(e) is None
    stats: dict = {}
    generate_batch(e, [Request([1, 2], 2, temperature=0.0)], stats=stats)
    assert stats["backend"] == "HJLM.step"


def test_stream_fused_equals_hjlm_step_greedy_and_stats():
    m = _model(torch.float64)
    stats: dict = {}
    a = generate(m, [1, 2, 3], 10, temperature=0.0, stats=stats)
    b = generate(m, [1, 2, 3], 10, temperature=0.0, fused=False)
    assert a == b
    assert stats["decode_tokens"] == 10 and stats["prefill_tokens"] == 3
    assert stats["backend"].startswith("fused")
    s1 = generate(m, [4], 8, temperature=1.0, top_k=5, seed=3)
    assert s1 == generate(m, [4], 8, temperature=1.0, top_k=5, seed=3, fused=False)
    with pytest.raises(ValueError, match="needs the fused decoder"):
        generate(m, [1], 2, fused=False, weights="int8")


def test_sample_rows_matches_per_row_filters():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 30, generator=g)
    temp = torch.tensor([0.0, 1.0, 0.5, 2.0], dtype=torch.float64)
    topk = torch.tensor([30, 3, 30, 1])
    topp = torch.tensor([1.0, 1.0, 0.6, 0.9], dtype=torch.float64)
    draws = torch.stack([sample_rows(logits, temp, topk, topp,
                                     torch.Generator().manual_seed(s)) for s in range(300)])
    assert bool((draws[:, 0] == logits[0].argmax()).all())
    assert bool((draws[:, 3] == logits[3].argmax()).all())  # top_k = 1
    for row in (1, 2):
        allowed = filter_logits(logits[row:row + 1] / temp[row].item(),
                                int(topk[row]), float(topp[row]))[0] > float("-inf")
        seen = torch.zeros(30, dtype=torch.bool)
        seen[draws[:, row]] = True
        assert bool((seen <= allowed).all()) and int(seen.sum()) == int(allowed.sum())


def test_generate_batch_per_request_settings():
    m = _model(torch.float64)
    reqs = [Request([1, 2, 3], 6, temperature=0.0),
            Request([5], 4, temperature=0.0),
            Request([7, 8], 0),
            Request([9, 9, 9, 9], 5, temperature=0.0, stop=[[0]])]
    outs = generate_batch(m, reqs, seed=0)
    for r, o in zip(reqs[:2], outs[:2]):
        assert o == generate(m, r.prompt, r.max_new_tokens, temperature=0.0)
    assert outs[2] == []
    free = generate(m, [9, 9, 9, 9], 5, temperature=0.0)
    stop = [free[2]]  # a stop sequence that the greedy output reaches
    reqs[3].stop = [stop]
    out3 = generate_batch(m, [reqs[3]], seed=0)[0]
    cut = free.index(stop[0])
    assert out3 == free[:cut]
    # without a fused step (attention) the batch runs request by request, same results
    att = _model(blocks=[{"kind": "attention", "n_heads": 2}, {"kind": "mamba"}])
    stats: dict = {}
    got = generate_batch(att, reqs[:2], stats=stats)
    assert stats["backend"] == "HJLM.step"
    assert got[0] == generate(att, [1, 2, 3], 6, temperature=0.0)
    with pytest.raises(ValueError, match="request 0: top_p"):
        generate_batch(m, [Request([1], 2, top_p=0.0)])
    assert list(stream(m, [1], 0)) == []


def test_parallel_and_gemm_paths_equal_hjlm_step():
    """A model large enough that projections and the Mamba/Mamba-2 state rows
    split over threads (threads=2), with Mamba's dt_proj (32 -> 1024) stored transposed."""
    m = _model(torch.float64, blocks=[{"kind": "mamba", "d_state": 4}, {"kind": "lstm"},
                                      {"kind": "mamba2", "d_state": 16, "ngroups": 2}], d=512)
    ids = torch.randint(0, 256, (9, 2), generator=torch.Generator().manual_seed(7))
    for threads in (1, 2):
        dec = FusedDecoder(m, threads=threads)
        st, ref = dec.zero_state(9), None
        for t in range(2):
            got = dec.step(ids[:, t], st)
            want, ref = m.step(ids[:, t], ref)
            assert _rel(got, want) < 1e-12
    assert FusedDecoder(_model()).threads == 1  # small: one thread by default
    with pytest.raises(ValueError, match="threads must be"):
        FusedDecoder(m, threads=0)


def test_generate_batch_mamba2_runs_fused_and_equals_hjlm_step():
    """Batched generation of a Mamba-2 model goes through the fused decoder; its greedy
    tokens equal HJLM.step's, request by request."""
    m = _model(torch.float64, blocks=MAMBA2_BLOCKS + [{"kind": "gru"}])
    reqs = [Request([3, 1, 4, 1], 7, temperature=0.0), Request([5], 5, temperature=0.0),
            Request([9, 2], 6, temperature=0.0)]
    stats: dict = {}
    outs = generate_batch(m, reqs, seed=0, stats=stats)
    assert stats["backend"].startswith("fused")
    for r, o in zip(reqs, outs):
        assert len(o) == r.max_new_tokens
        assert o == generate(m, r.prompt, r.max_new_tokens, temperature=0.0, fused=False)


@pytest.mark.parametrize("n_groups,limit", [(2, None), (1, (0.0, 0.05))])
def test_fused_mamba2_equals_transformers_mamba2_for_causal_lm(n_groups, limit):
    """A Mamba2ForCausalLM loaded with HJLM.from_hf, decoded by the fused step token by
    token: transformers' logits over the whole sequence (float32)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(n_groups)
    kw = {} if limit is None else {"time_step_limit": limit}
    cfg = transformers.Mamba2Config(vocab_size=32, hidden_size=16, num_heads=4, head_dim=8,
                                    expand=2, state_size=8, n_groups=n_groups, conv_kernel=4,
                                    chunk_size=8, num_hidden_layers=2, use_bias=True, **kw)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m = HJLM.from_hf(hf.state_dict(), config=hf.config.to_dict()).eval()
    ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = hf(ids).logits
    dec = FusedDecoder(m)
    st = dec.zero_state(2)
    got = torch.stack([dec.step(ids[:, t], st) for t in range(ids.shape[1])], 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
