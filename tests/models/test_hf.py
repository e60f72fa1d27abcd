import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hjseq.models import HJLM

DATA = Path(__file__).parent / "data"
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def test_saved_hf_reference_without_transformers():
    """The stored tiny HF checkpoint's logits (computed by transformers when it was made)."""
    ref = load_file(str(DATA / "hf_mamba_tiny" / "expected.safetensors"))
    model = HJLM.from_hf_mamba(DATA / "hf_mamba_tiny").eval()
    assert [b.kind for b in model.config.blocks] == ["mamba", "mamba"]
    assert model.config.blocks[0].options["d_conv"] == 3 and model.config.residual_in_fp32
    with torch.no_grad():
        out = model(ref["ids"])
    torch.testing.assert_close(out, ref["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed "
                    "(test_saved_hf_reference_without_transformers covers the import)")
def test_matches_transformers_mamba_for_causal_lm(tmp_path):
    sys.path.insert(0, str(DATA))
    try:
        from make_hf_mamba_ref import tiny_hf_mamba
    finally:
        sys.path.remove(str(DATA))
    hf = tiny_hf_mamba(seed=1)
    hf.save_pretrained(tmp_path)
    ids = torch.randint(0, 16, (3, 17))
    with torch.no_grad():
        want = hf(ids).logits
        got = HJLM.from_hf_mamba(tmp_path).eval()(ids)
        from_sd = HJLM.from_hf_mamba(hf.state_dict(), config=hf.config.to_dict()).eval()(ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_sd, got, rtol=0, atol=0)


def test_hf_import_errors(tmp_path):
    with pytest.raises(ValueError, match="needs config="):
        HJLM.from_hf_mamba({"backbone.embeddings.weight": torch.zeros(4, 2)})
    with pytest.raises(FileNotFoundError, match="not a directory"):
        HJLM.from_hf_mamba(tmp_path / "nope")
    cfg = json.loads((DATA / "hf_mamba_tiny" / "config.json").read_text())
    sd = load_file(str(DATA / "hf_mamba_tiny" / "model.safetensors"))
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        HJLM.from_hf_mamba(sd, config={**cfg, "hidden_act": "gelu"})
    with pytest.raises(KeyError, match="unexpected key 'backbone.extra'"):
        HJLM.from_hf_mamba({**sd, "backbone.extra": torch.zeros(1)}, config=cfg)


def test_from_hf_detects_mamba():
    ref = load_file(str(DATA / "hf_mamba_tiny" / "expected.safetensors"))
    model = HJLM.from_hf(DATA / "hf_mamba_tiny").eval()
    assert [b.kind for b in model.config.blocks] == ["mamba", "mamba"]
    with torch.no_grad():
        torch.testing.assert_close(model(ref["ids"]), ref["logits"], rtol=1e-5, atol=1e-5)


def _tiny_hf_mamba2(n_groups: int, **kw):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(n_groups)
    cfg = Mamba2Config(vocab_size=32, hidden_size=16, num_heads=4, head_dim=8, expand=2,
                       state_size=8, n_groups=n_groups, conv_kernel=4, chunk_size=8,
                       num_hidden_layers=2, use_bias=True, **kw)
    model = Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
@pytest.mark.parametrize("n_groups", [1, 2])
def test_from_hf_matches_transformers_mamba2_for_causal_lm(n_groups, tmp_path):
    hf = _tiny_hf_mamba2(n_groups)
    hf.save_pretrained(tmp_path)
    ids = torch.randint(0, 32, (2, 19))
    model = HJLM.from_hf(tmp_path).eval()
    assert [b.kind for b in model.config.blocks] == ["mamba2", "mamba2"]
    assert model.layers[0].mixer.ngroups == n_groups and not model.config.tie_embeddings
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids)
        from_sd = HJLM.from_hf(hf.state_dict(), config=hf.config.to_dict()).eval()(ids)
        state, steps = None, []
        for t in range(ids.shape[1]):
            logits, state = model.step(ids[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(from_sd, got, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack(steps, 1), want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
def test_from_hf_mamba2_time_step_limit_and_errors(tmp_path):
    hf = _tiny_hf_mamba2(1, time_step_limit=(0.0, 0.05))
    ids = torch.randint(0, 32, (1, 12))
    model = HJLM.from_hf(hf.state_dict(), config=hf.config.to_dict()).eval()
    assert model.layers[0].mixer.dt_limit == (0.0, 0.05)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)
    cfg, sd = hf.config.to_dict(), hf.state_dict()
    with pytest.raises(ValueError, match="from_hf_mamba reads 'mamba'"):
        HJLM.from_hf_mamba(sd, config=cfg)
    with pytest.raises(ValueError, match="num_heads \\* head_dim"):
        HJLM.from_hf(sd, config={**cfg, "num_heads": 3})
    with pytest.raises(ValueError, match="model_type is 'llama'"):
        HJLM.from_hf(sd, config={**cfg, "model_type": "llama"})
