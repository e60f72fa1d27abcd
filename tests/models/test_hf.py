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
