"""Regenerate ``hf_mamba_tiny/``: a tiny random ``transformers.MambaForCausalLM`` saved with
``save_pretrained`` plus its logits on fixed ids, so ``test_hf.py`` can check the import
against Hugging Face's own numbers on machines without transformers.

    python tests/models/data/make_hf_mamba_ref.py
"""
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import MambaConfig, MambaForCausalLM

OUT = Path(__file__).parent / "hf_mamba_tiny"


def tiny_hf_mamba(seed: int = 0) -> MambaForCausalLM:
    """HF Mamba with every parameter perturbed off its (partly constant) init."""
    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=16, hidden_size=8, state_size=4, num_hidden_layers=2,
                      expand=2, conv_kernel=3, use_conv_bias=True, use_bias=True,
                      time_step_rank=2)
    model = MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


if __name__ == "__main__":
    model = tiny_hf_mamba()
    model.save_pretrained(OUT)
    (OUT / "generation_config.json").unlink(missing_ok=True)
    ids = torch.tensor([[1, 5, 9, 2, 2, 15, 0, 7, 3, 11], [4, 4, 8, 12, 6, 1, 13, 10, 14, 2]])
    with torch.no_grad():
        logits = model(ids).logits
    save_file({"ids": ids, "logits": logits.contiguous()}, str(OUT / "expected.safetensors"))
    print(f"wrote {OUT}")
