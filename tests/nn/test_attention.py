"""HJAttention: equal to scaled_dot_product_attention at ε = √d_k, Hopf–Cole weights, KV cache."""
import math

import pytest
import torch
import torch.nn.functional as F

from hjseq import hopf
from hjseq.nn.attention import HJAttention, KVCache

D = torch.float64


def _sdpa_reference(m: HJAttention, x, key_padding_mask=None):
    """Independent reference: the module's projections, then F.scaled_dot_product_attention."""
    B, L, _ = x.shape
    split = lambda z: z.view(B, L, m.n_heads, m.d_head).transpose(1, 2)
    q, k, v = split(m.q_proj(x)), split(m.k_proj(x)), split(m.v_proj(x))
    mask = None
    if m.causal:
        mask = torch.ones(L, L, dtype=torch.bool).tril()[None, None]
    if key_padding_mask is not None:
        keep = (~key_padding_mask)[:, None, None, :]
        mask = keep if mask is None else mask & keep
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return m.out_proj(o.transpose(1, 2).reshape(B, L, m.d_model))


def _padding(B, L):
    # right padding with at least one valid key per row (so every query sees a key)
    lengths = torch.randint(1, L + 1, (B,))
    return torch.arange(L)[None, :] >= lengths[:, None]


@pytest.mark.parametrize("d_model,n_heads", [(8, 1), (12, 3), (16, 2), (32, 4)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_sdpa(d_model, n_heads, causal, masked):
    m = HJAttention(d_model, n_heads, causal=causal, dtype=D)
    assert m.eps == math.sqrt(d_model // n_heads)
    x = torch.randn(3, 7, d_model, dtype=D)
    mask = _padding(3, 7) if masked else None
    ref = _sdpa_reference(m, x, mask)
    y, pi = m(x, mask, return_weights=True)  # explicit Gibbs path
    assert (y - ref).abs().max().item() <= 1e-10
    y_fast = m(x, mask)  # SDPA path
    assert (y_fast - ref).abs().max().item() <= 1e-10
    m.use_sdpa = False
    assert (m(x, mask) - ref).abs().max().item() <= 1e-10


def test_weights_sum_to_one_and_masked_keys_get_zero():
    m = HJAttention(16, 4, causal=True, dtype=D)
    x = torch.randn(2, 9, 16, dtype=D)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, 6:] = True
    pi = m.attribution_weights(x, mask)
    assert pi.shape == (2, 4, 9, 9)
    assert (pi.sum(-1) - 1).abs().max().item() <= 1e-14
    assert pi[0, :, :, [1, 4]].abs().max().item() == 0
    assert pi[1, :, :, 6:].abs().max().item() == 0
    assert pi.triu(1).abs().max().item() == 0  # causal: no weight on future keys


def test_weights_are_hopf_cole_gibbs_weights():
    # π from QKᵀ/ε equals the Gibbs weights of atoms y = k, g = −|k|²/2 (+∞ masked), t = ½
    m = HJAttention(12, 3, causal=False, eps=0.7, dtype=D)
    x = torch.randn(2, 6, 12, dtype=D)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 2] = True
    q, _, _ = m.qkv(x)
    y, g, t = m.atoms(x, mask)
    pi = m.attribution_weights(x, mask)
    for b in range(2):
        for h in range(3):
            ref = hopf.gibbs_weights(q[b, h], y[b, h], g[b, h], t, m.eps)
            assert (pi[b, h] - ref).abs().max().item() <= 1e-13
    assert pi[1, :, :, 2].abs().max().item() == 0


def test_eps_zero_is_hard_attention():
    m = HJAttention(8, 2, causal=False, eps=0.0, dtype=D)
    x = torch.randn(2, 5, 8, dtype=D)
    y, pi = m(x, return_weights=True)
    q, k, v = m.qkv(x)
    idx = (q @ k.transpose(-1, -2)).argmax(-1)
    assert torch.equal(pi, F.one_hot(idx, 5).to(D))
    o = torch.gather(v, 2, idx[..., None].expand(-1, -1, -1, m.d_head))
    assert (y - m._merge(o)).abs().max().item() <= 1e-14
    # small ε converges to it
    m_soft = HJAttention(8, 2, causal=False, eps=1e-4, dtype=D)
    m_soft.load_state_dict(m.state_dict())
    assert (m_soft(x) - y).abs().max().item() <= 1e-6


@pytest.mark.parametrize("d_model,n_heads", [(8, 2), (12, 1)])
def test_kv_cache_step_equals_forward(d_model, n_heads):
    m = HJAttention(d_model, n_heads, causal=True, eps=0.9, dtype=D)
    x = torch.randn(2, 8, d_model, dtype=D)
    full = m(x)
    cache = None
    for i in range(8):
        y_t, cache = m.step(x[:, i], cache)
        assert (y_t - full[:, i]).abs().max().item() <= 1e-12
    assert isinstance(cache, KVCache) and len(cache) == 8
    # prefill then step, with a dict cache
    y_p, c = m.prefill(x[:, :5])
    assert (y_p - full[:, :5]).abs().max().item() <= 1e-12
    cache = {"k": c.k, "v": c.v}
    for i in range(5, 8):
        y_t, cache = m.step(x[:, i], cache)
        assert (y_t - full[:, i]).abs().max().item() <= 1e-12


def test_kv_cache_step_with_padding():
    m = HJAttention(8, 2, causal=True, dtype=D)
    x = torch.randn(2, 6, 8, dtype=D)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, :2] = True  # left padding in the prompt of sequence 1
    full = m(x, mask)
    _, cache = m.prefill(x[:, :4], mask[:, :4])
    for i in range(4, 6):
        y_t, cache = m.step(x[:, i], cache)
        assert (y_t - full[:, i]).abs().max().item() <= 1e-12
    # queries with no visible key (positions 0, 1 of sequence 1) output the bias only
    pi = m.attribution_weights(x, mask)
    assert pi[1, :, :2].abs().max().item() == 0
    assert torch.isfinite(full).all()


def test_gradients_flow():
    m = HJAttention(8, 2, dtype=D)
    x = torch.randn(1, 4, 8, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: m(z, return_weights=True)[0], (x,))


def test_bad_input():
    with pytest.raises(ValueError, match="n_heads"):
        HJAttention(10, 3)
    with pytest.raises(ValueError, match="eps"):
        HJAttention(8, 2, eps=-1.0)
    m = HJAttention(8, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, d_model\)"):
        m(torch.randn(4, 8))
    with pytest.raises(ValueError, match="d_model=8"):
        m(torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match="x contains NaN"):
        m(torch.full((1, 2, 8), float("nan")))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, L_k\)"):
        m(torch.randn(2, 4, 8), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask must be a bool"):
        m(torch.randn(2, 4, 8), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, d_model\)"):
        m.step(torch.randn(2, 1, 8))
    _, cache = m.prefill(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="cache.k/cache.v"):
        m.step(torch.randn(3, 8), cache)


def test_spec_declares_quadratic_hopf_cole():
    from hjseq.hamiltonians import Quadratic

    spec = HJAttention(16, 4).spec
    assert isinstance(spec.hamiltonian, Quadratic)
    assert spec.viscosity == 2.0 and spec.scheme == "hopf_cole"


# ---------------------------------------------------------------- rotary positions (RoPE)
def _rope_reference(z, start, base=10000.0):
    """Independent RoPE: channel pairs (m, m + d/2) as complex numbers turned by e^{i p θ_m}."""
    d = z.shape[-1]
    h = d // 2
    theta = base ** (-torch.arange(h, dtype=D) * 2 / d)
    p = torch.arange(start, start + z.shape[-2], dtype=D)
    rot = torch.polar(torch.ones(len(p), h, dtype=D), p[:, None] * theta[None, :])
    c = torch.complex(z[..., :h], z[..., h:]) * rot
    return torch.cat([c.real, c.imag], -1)


def test_rope_rotates_queries_and_keys():
    m = HJAttention(16, 2, pos="rope", dtype=D)
    nope = HJAttention(16, 2, pos="none", dtype=D)
    nope.load_state_dict(m.state_dict())
    x = torch.randn(2, 7, 16, dtype=D)
    q, k, v = m.qkv(x, start=3)
    q0, k0, v0 = nope.qkv(x)
    assert (q - _rope_reference(q0, 3)).abs().max().item() <= 1e-12
    assert (k - _rope_reference(k0, 3)).abs().max().item() <= 1e-12
    assert torch.equal(v, v0)
    # a rotation keeps norms, so g = −|k|²/2 is the same with and without RoPE
    assert ((k * k).sum(-1) - (k0 * k0).sum(-1)).abs().max().item() <= 1e-12
    # scores depend on j − i only: shifting every position changes nothing
    qa, ka, _ = m.qkv(x, start=0)
    qb, kb, _ = m.qkv(x, start=11)
    assert (qa @ ka.transpose(-1, -2) - qb @ kb.transpose(-1, -2)).abs().max().item() <= 1e-11
    # and the output of a token depends on its position (unlike NoPE's set of keys)
    perm = torch.tensor([0, 2, 1, 3, 4, 5, 6])
    assert (m(x)[:, 6] - m(x[:, perm])[:, 6]).abs().max().item() > 1e-6
    assert (nope(x)[:, 6] - nope(x[:, perm])[:, 6]).abs().max().item() <= 1e-12


@pytest.mark.parametrize("causal", [True, False])
def test_rope_equals_sdpa_on_rotated_keys(causal):
    m = HJAttention(12, 3, causal=causal, pos="rope", dtype=D)
    nope = HJAttention(12, 3, causal=causal, pos="none", dtype=D)
    nope.load_state_dict(m.state_dict())
    x = torch.randn(3, 6, 12, dtype=D)
    mask = _padding(3, 6)
    q0, k0, v = nope.qkv(x)
    vis = (~mask)[:, None, None, :]
    if causal:
        vis = vis & torch.ones(6, 6, dtype=torch.bool).tril()
    o = F.scaled_dot_product_attention(_rope_reference(q0, 0), _rope_reference(k0, 0), v, attn_mask=vis)
    ref = m.out_proj(o.transpose(1, 2).reshape(3, 6, 12))
    for y in (m(x, mask), m(x, mask, return_weights=True)[0]):  # right padding: key 0 is seen
        assert (y - ref).abs().max().item() <= 1e-10


def test_rope_weights_and_value_are_hopf_cole_of_rotated_atoms():
    # π = Gibbs weights and log-partition = Hopf–Cole value of atoms y_j = R_j k_j,
    # g_j = −|y_j|²/2 at the query point R_i q_i, t = ½
    m = HJAttention(8, 2, causal=True, eps=0.6, pos="rope", dtype=D)
    x = torch.randn(2, 5, 8, dtype=D)
    q, _, _ = m.qkv(x)
    y, g, t = m.atoms(x)
    pi = m.attribution_weights(x)
    for b in range(2):
        for h in range(2):
            for i in range(5):
                yi, gi = y[b, h, : i + 1], g[b, h, : i + 1]  # the keys query i sees
                ref = hopf.gibbs_weights(q[b, h, i], yi, gi, t, m.eps)
                assert (pi[b, h, i, : i + 1] - ref).abs().max().item() <= 1e-13
                u = hopf.hopf_cole(q[b, h, i], yi, gi, t, m.eps)
                s = yi @ q[b, h, i]
                ident = 0.5 * q[b, h, i].dot(q[b, h, i]) - hopf.smooth_max(s, m.eps)
                assert abs(u.item() - ident.item()) <= 1e-12
    assert pi.triu(1).abs().max().item() == 0


@pytest.mark.parametrize("n_heads", [1, 2])
def test_rope_kv_cache_step_equals_forward(n_heads):
    m = HJAttention(8, n_heads, causal=True, eps=0.9, pos="rope", dtype=D)
    x = torch.randn(2, 9, 8, dtype=D)
    full = m(x)
    cache = None
    for i in range(9):
        y_t, cache = m.step(x[:, i], cache)
        assert (y_t - full[:, i]).abs().max().item() <= 1e-12
    _, k, _ = m.qkv(x)
    assert (cache.k - k).abs().max().item() <= 1e-13  # the cache holds rotated keys
    y_p, c = m.prefill(x[:, :4])
    assert (y_p - full[:, :4]).abs().max().item() <= 1e-12
    for i in range(4, 9):
        y_t, c = m.step(x[:, i], c)
        assert (y_t - full[:, i]).abs().max().item() <= 1e-12
    # left padding: positions count the padding, and step continues after it exactly
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, :3] = True
    full = m(x, mask)
    _, c = m.prefill(x[:, :5], mask[:, :5])
    for i in range(5, 9):
        y_t, c = m.step(x[:, i], c)
        assert (y_t - full[:, i]).abs().max().item() <= 1e-12


def test_rope_tropicalize_is_hard_attention_on_rotated_keys():
    from hjseq.analysis.tropical import linear_region_patterns, tropicalize

    m = HJAttention(8, 2, causal=True, pos="rope", dtype=D)
    x = torch.randn(2, 6, 8, dtype=D)
    trop, report = tropicalize(m)
    assert trop.eps == 0 and report.entries[0].kind == "attention"
    q, k, v = m.qkv(x)
    s = (q @ k.transpose(-1, -2)).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
    idx = s.argmax(-1)
    y, pi = trop(x, return_weights=True)
    assert torch.equal(pi, F.one_hot(idx, 6).to(D))
    o = torch.gather(v, 2, idx[..., None].expand(-1, -1, -1, m.d_head))
    assert (y - trop._merge(o)).abs().max().item() <= 1e-14
    assert torch.equal(linear_region_patterns(trop, x), idx.reshape(2, -1))
    soft = HJAttention(8, 2, causal=True, eps=1e-4, pos="rope", dtype=D)
    soft.load_state_dict(m.state_dict())
    assert (soft(x) - y).abs().max().item() <= 1e-6


def test_eps_zero_splits_ties_evenly():
    # hopf.gibbs's one tie rule: equal keys share the mass
    m = HJAttention(4, 1, causal=False, eps=0.0, bias=False, dtype=D)
    x = torch.randn(1, 1, 4, dtype=D).expand(1, 3, 4).contiguous()
    _, pi = m(x, return_weights=True)
    assert (pi - 1 / 3).abs().max().item() <= 1e-15


def test_rope_options_and_lm_default():
    from hjseq.models.config import ConfigError, load_config
    from hjseq.models.lm import HJLM

    with pytest.raises(ValueError, match="pos must be one of 'rope', 'none'"):
        HJAttention(8, 2, pos="alibi")
    with pytest.raises(ValueError, match="even head width"):
        HJAttention(6, 2, pos="rope")
    with pytest.raises(ValueError, match="rope_base"):
        HJAttention(8, 2, pos="rope", rope_base=0.5)
    assert HJAttention(8, 2).pos == "none"  # the module keeps torch's semantics by default
    blocks = [{"kind": "attention", "n_heads": 2}, {"kind": "attention", "n_heads": 2, "pos": "none"}]
    lm = HJLM({"d_model": 16, "blocks": blocks})
    assert [layer.mixer.pos for layer in lm.layers] == ["rope", "none"]
    with pytest.raises(ConfigError, match=r"blocks\[0\]\.pos: unknown 'abs'"):
        load_config({"d_model": 16, "blocks": [{"kind": "attention", "pos": "abs"}]})
    with pytest.raises(ConfigError, match=r"blocks\[0\]\.n_heads: rotary positions need an even"):
        load_config({"d_model": 6, "blocks": [{"kind": "attention", "n_heads": 2}]})
