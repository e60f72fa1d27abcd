import pytest
import torch

from hjseq.models import HJLM
from hjseq.models.generate import filter_logits, generate, sample_next


def test_top_k_and_top_p_masks():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda out: (out > float("-inf")).nonzero()[:, 1].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    # nucleus: the smallest set whose mass reaches top_p (0.5 + 0.3 = 0.8)
    assert kept(filter_logits(logits, top_p=0.8)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.81)) == [1, 2, 3]
    assert kept(filter_logits(logits, top_p=0.1)) == [1]
    assert kept(filter_logits(logits, top_k=3, top_p=0.6)) == [1, 3]
    with pytest.raises(ValueError, match="top_p must be in"):
        filter_logits(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        filter_logits(logits, top_k=0)


def test_sampling_is_seeded_and_temperature_zero_is_greedy():
    logits = torch.randn(3, 11)
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 1.0, top_k=1), logits.argmax(-1))
    a = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5))
    b = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # the empirical distribution follows softmax(logits / T)
    draws = torch.stack([sample_next(logits[:1], 0.5, generator=torch.Generator().manual_seed(s))
                         for s in range(2000)])
    freq = torch.bincount(draws[:, 0], minlength=11).double() / 2000
    torch.testing.assert_close(freq, torch.softmax(logits[0].double() / 0.5, -1), atol=0.04, rtol=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_next(logits, -1.0)


def test_greedy_generation_equals_full_forward_decoding():
    torch.manual_seed(0)
    model = HJLM({"d_model": 16, "blocks": [{"kind": "mamba", "d_state": 4},
                                            {"kind": "attention", "n_heads": 2},
                                            {"kind": "lstm"}]}).double()
    prompt = [100, 101, 102, 32]
    out = generate(model, prompt, 12, temperature=0.0)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):  # the O(L^2) way: re-run the whole sequence for every token
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[len(prompt):]
    assert generate(model, prompt, 8, temperature=1.0, top_p=0.9, seed=1) == \
        generate(model, prompt, 8, temperature=1.0, top_p=0.9, seed=1)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3)
