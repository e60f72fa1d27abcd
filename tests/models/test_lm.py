import pytest
import torch

from hjseq import hopf
from hjseq.models import HJLM, LSEMLP

KINDS = [
    {"kind": "mamba", "d_state": 4, "expand": 2},
    {"kind": "mamba", "d_state": 4, "scheme": "zoh"},
    {"kind": "rnn", "dt": 0.5},
    {"kind": "gru"},
    {"kind": "lstm", "hidden_size": 12},
    {"kind": "attention", "n_heads": 2},
    {"kind": "lse", "n_units": 12, "n_atoms": 3, "eps": 0.3},
]


def _model(block):
    torch.manual_seed(0)
    return HJLM({"d_model": 16, "blocks": [block, {"kind": "lse", "n_units": 8}] * 2}).double()


@pytest.mark.parametrize("block", KINDS, ids=lambda b: "-".join(str(v) for v in b.values()))
def test_step_decoding_equals_forward(block):
    model = _model(block).eval()
    ids = torch.randint(0, 256, (2, 11))
    full = model(ids)
    state, steps = None, []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=0, atol=1e-10)
    # a prefix's final state continues the sequence: prefill then forward / step
    head, st = model(ids[:, :6], return_state=True)
    torch.testing.assert_close(head, full[:, :6], rtol=0, atol=1e-10)
    torch.testing.assert_close(model(ids[:, 6:], state=st), full[:, 6:], rtol=0, atol=1e-10)
    nxt, _ = model.step(ids[:, 6], st)
    torch.testing.assert_close(nxt, full[:, 6], rtol=0, atol=1e-10)


def test_save_pretrained_roundtrip(tmp_path):
    model = _model({"kind": "gru", "dt": 0.7}).float()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    back = HJLM.from_pretrained(tmp_path)
    assert back.config.to_dict() == model.config.to_dict()
    assert back.lm_head.weight is back.embedding.weight
    ids = torch.randint(0, 256, (1, 7))
    torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        HJLM.from_pretrained(tmp_path / "missing")


def test_lse_mlp_is_a_bank_of_hopf_cole_layers():
    mlp = LSEMLP(5, n_units=3, n_atoms=4, eps=0.25).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    W = mlp.in_proj.weight.view(3, 4, 5)
    b = mlp.in_proj.bias.view(3, 4)
    # unit k is the LSE layer f_eps(x) = eps log sum_j exp((W_kj x + b_kj)/eps)
    want = torch.stack([hopf.lse(x, W[k], b[k], 0.25) for k in range(3)], -1)
    torch.testing.assert_close(mlp.unit_outputs(x), want)
    # the Hopf-Cole atoms give back the same affine pieces
    y, g = mlp.atoms(t=0.5)
    W2, b2 = hopf.affine_from_atoms(y, g, 0.5)
    torch.testing.assert_close(W2, W)
    torch.testing.assert_close(b2, b)
    # eps = 0 is the tropical (maxout) limit
    mlp.eps = 0.0
    want0 = torch.stack([(x @ W[k].T + b[k]).amax(-1) for k in range(3)], -1)
    torch.testing.assert_close(mlp.unit_outputs(x), want0)


def test_residual_in_fp32_and_untied_head():
    model = HJLM({"d_model": 8, "tie_embeddings": False, "residual_in_fp32": True,
                  "blocks": [{"kind": "lse"}]})
    assert model.lm_head.weight is not model.embedding.weight
    assert "lm_head" in model.summary()
    out = model(torch.randint(0, 256, (1, 3)))
    assert out.shape == (1, 3, 256) and out.dtype == torch.float32
