"""Tokenizers: bytes and byte-level BPE round trips, training with bpe:N, generation from a
trained run and from an imported Hugging Face directory with its tokenizer."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from hjseq.cli import main as cli
from hjseq.models import HJLM
from hjseq.models.config import ConfigError, load_config
from hjseq.models.tokenizer import (ByteTokenizer, TokenizerError, load_tokenizer,
                                    parse_tokenizer_spec, split_for_encoding, train_bpe)
from hjseq.models.train import train

DATA = Path(__file__).parent / "data"
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
TEXT = ("import os\nimport sys\ndef f(x):\n    return x + 1\n\n\nclass Naïve:\n"
        "    '''東京 ✓ — tab\there'''\n  \n\t\n") * 40


def test_spec_and_config():
    assert parse_tokenizer_spec("bytes") == ("bytes", 256)
    assert parse_tokenizer_spec("bpe:4096") == ("bpe", 4096)
    for bad in ("bpe", "bpe:256", "bpe:-3", "bpe:x", "wordpiece:100", ""):
        with pytest.raises(TokenizerError, match=r"expected \"bytes\" or \"bpe:N\""):
            parse_tokenizer_spec(bad)
    blocks = [{"kind": "gru"}]
    run = load_config({"model": {"d_model": 8, "blocks": blocks}, "train": {"tokenizer": "bpe:512"}})
    assert run.model.vocab_size == 512  # the vocabulary follows the tokenizer
    assert load_config({"model": {"d_model": 8, "blocks": blocks}}).model.vocab_size == 256
    with pytest.raises(ConfigError, match=r"train.tokenizer: expected \"bytes\" or \"bpe:N\""):
        load_config({"model": {"d_model": 8, "blocks": blocks}, "train": {"tokenizer": "bpe:1"}})
    with pytest.raises(ConfigError, match="model.vocab_size: 300 is smaller than the 512 tokens"):
        load_config({"model": {"d_model": 8, "blocks": blocks, "vocab_size": 300},
                     "train": {"tokenizer": "bpe:512"}})


def test_bytes_round_trip():
    tok = ByteTokenizer()
    raw = TEXT.encode()
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode_bytes(raw).tolist() == list(raw)
    assert int(tok.byte_lengths.sum()) == 256


def test_bpe_is_deterministic_and_round_trips():
    raw = TEXT.encode() + b"\xff broken utf-8"
    a, b = train_bpe(raw, 300), train_bpe(raw, 300)
    assert a.to_json() == b.to_json() and a.vocab_size == 300
    text = raw.decode("utf-8", errors="replace")
    for s in (text, "unseen: Ωμέγα 🙂 \r\n x", " leading space", ""):
        assert a.decode(a.encode(s)) == s
    ids = a.encode_bytes(raw)
    assert ids.numel() < len(raw) / 2  # merges happened
    # chunked encoding gives the tokens of the whole text, and the byte table counts its bytes
    assert ids.tolist() == a.encode(text)
    assert int(a.byte_lengths[ids.long()].sum()) == len(text.encode())
    assert "".join(split_for_encoding(text, 50)) == text
    assert len(split_for_encoding(text, 50)) > 10


def test_train_with_bpe_then_generate_and_resume(tmp_path, tiny_run, capsys, monkeypatch):
    run = tiny_run(tokenizer="bpe:320", steps=4, checkpoint_interval=2)
    assert run.model.vocab_size == 320
    out = tmp_path / "run"
    res = train(run, out)
    assert (out / "model" / "tokenizer.json").is_file()
    tok = load_tokenizer(out / "model")
    assert tok.vocab_size == 320
    assert res.sample.startswith("def ") and len(res.sample) > 4
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["tokenizer"] == tok.to_json()
    # generate with the run's tokenizer (greedy = the argmax chain of full forwards)
    capsys.readouterr()
    assert cli(["generate", "--checkpoint", str(out), "--prompt", "def ", "-n", "6",
                "--temperature", "0"]) == 0
    got = capsys.readouterr().out
    model = HJLM.from_pretrained(out / "model").eval()
    ids = tok.encode("def ")
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert got == tok.decode(ids) + "\n"
    # resume reuses the saved tokenizer (no retraining) and continues to the same losses
    full = train(run, tmp_path / "full")
    part = tmp_path / "part"
    train(tiny_run(tokenizer="bpe:320", steps=2), part)  # warmup = 2: same first steps
    import hjseq.models.tokenizer as T

    monkeypatch.setattr(T, "train_bpe", lambda *a: pytest.fail("resume retrained the tokenizer"))
    resumed = train(run, part, resume=True)
    assert resumed.losses == {s: full.losses[s] for s in (3, 4)}
    assert resumed.val_bpb == full.val_bpb


def _char_tokenizer_json(chars: str) -> str:
    """A 16-token character-level tokenizers file (not byte-level): one token per char."""
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    return tok.to_str()


def test_generate_from_imported_hf_directory(tmp_path, capsys):
    d = tmp_path / "hf"
    shutil.copytree(DATA / "hf_mamba_tiny", d)
    chars = "abcdefghijklmnop"
    (d / "tokenizer.json").write_text(_char_tokenizer_json(chars))
    model = HJLM.from_hf_mamba(d).eval()
    assert model.tokenizer is not None and model.tokenizer.vocab_size == 16
    assert model.tokenizer.decode(model.tokenizer.encode("fig")) == "fig"
    capsys.readouterr()
    assert cli(["generate", "--checkpoint", str(d), "--prompt", "fig", "-n", "5",
                "--temperature", "0"]) == 0
    got = capsys.readouterr().out
    ids = [chars.index(c) for c in "fig"]
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert got == "".join(chars[i] for i in ids) + "\n"
    # without a tokenizer, a non-byte vocabulary is refused with the fix
    (d / "tokenizer.json").unlink()
    assert HJLM.from_hf_mamba(d).tokenizer is None
    assert cli(["generate", "--checkpoint", str(d), "--prompt", "fig"]) == 2
    assert "no tokenizer.json was found" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed (the import with "
                    "a tokenizer is covered by test_generate_from_imported_hf_directory)")
def test_hf_byte_level_tokenizer_generation_matches_transformers(tmp_path, capsys):
    from transformers import MambaConfig, MambaForCausalLM, PreTrainedTokenizerFast

    tok = train_bpe(TEXT.encode(), 300)
    torch.manual_seed(0)
    hf = MambaForCausalLM(MambaConfig(vocab_size=300, hidden_size=16, state_size=4,
                                      num_hidden_layers=2, expand=2, conv_kernel=3)).eval()
    d = tmp_path / "hf"
    hf.save_pretrained(d)
    PreTrainedTokenizerFast(tokenizer_object=tok.tok).save_pretrained(d)
    assert json.loads((d / "tokenizer.json").read_text())["decoder"]["type"] == "ByteLevel"
    prompt = "def f(x):"
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        want = hf.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()
    capsys.readouterr()
    assert cli(["generate", "--checkpoint", str(d), "--prompt", prompt, "-n", "6",
                "--temperature", "0"]) == 0
    assert capsys.readouterr().out == tok.decode(want) + "\n"


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed (it reads "
                    "tokenizer_config.json-only directories)")
def test_tokenizer_config_without_vocabulary_is_refused(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(TEXT.encode(), 300)
    PreTrainedTokenizerFast(tokenizer_object=tok.tok).save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).encode(TEXT[:40]) == tok.encode(TEXT[:40])
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="cannot build its tokenizer|builds no vocabulary"):
        load_tokenizer(tmp_path)
