import json

import pytest
import torch

from hjseq.models import HJLM, ConfigError, load_config

GOOD = """
[model]
d_model = 32
repeat = 2
blocks = [{kind = "gru", dt = 0.5}, {kind = "attention", n_heads = 4}, {kind = "lse", repeat = 2}]

[train]
steps = 10
lr = 1e-3
"""


def _write(tmp_path, text, name="cfg.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_toml_block_list_and_repeat(tmp_path):
    run = load_config(_write(tmp_path, GOOD))
    kinds = [b.kind for b in run.model.blocks]
    # entry-level repeat expands in place, model-level repeat repeats the whole list
    assert kinds == ["gru", "attention", "lse", "lse"] * 2
    assert run.model.blocks[0].options == {"dt": 0.5}
    assert run.train.steps == 10 and run.train.lr == 1e-3


def test_python_list_times_n_and_json_roundtrip(tmp_path):
    cfg = {"d_model": 32, "blocks": [{"kind": "ssm"}, {"kind": "attention", "n_heads": 4}] * 3}
    run = load_config(cfg)
    assert [b.kind for b in run.model.blocks] == ["mamba", "attention"] * 3  # ssm is an alias
    p = _write(tmp_path, json.dumps(run.to_dict()), "cfg.json")
    assert load_config(p).to_dict() == run.to_dict()


@pytest.mark.parametrize("blocks, key, words", [
    ('[{kind = "transformer"}]', "model.blocks[0].kind", "unknown block kind 'transformer'"),
    ('[{kind = "gru"}, {kind = "mamba", d_stat = 8}]', "model.blocks[1].d_stat",
     "unknown option for a 'mamba' block"),
    ('[{kind = "attention", n_heads = "four"}]', "model.blocks[0].n_heads",
     "expected int, got str 'four'"),
    ('[{kind = "attention", n_heads = 5}]', "model.blocks[0].n_heads", "does not divide"),
    ('[{kind = "lse", eps = -1.0}]', "model.blocks[0].eps", "must be >= 0"),
    ('[{kind = "mamba", scheme = "rk4"}]', "model.blocks[0].scheme", "unknown scheme"),
    ('[{kind = "rnn", bias = 1}]', "model.blocks[0].bias", "expected bool"),
    ('[{d_state = 4}]', "model.blocks[0].kind", "missing"),
    ('[]', "model.blocks", "non-empty list"),
])
def test_errors_name_file_and_key(tmp_path, blocks, key, words):
    p = _write(tmp_path, f"[model]\nd_model = 32\nblocks = {blocks}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: {key}: "), msg
    assert words in msg


def test_train_table_errors(tmp_path):
    base = '[model]\nd_model = 8\nblocks = [{kind = "lse"}]\n[train]\n'
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown option"):
        load_config(_write(tmp_path, base + "stepz = 3\n"))
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int, got float"):
        load_config(_write(tmp_path, base + "batch_size = 2.5\n"))
    with pytest.raises(ConfigError, match=r"train\.steps: must be >= 1"):
        load_config(_write(tmp_path, base + "steps = 0\n"))
    with pytest.raises(ConfigError, match=r"model\.d_model: missing"):
        load_config(_write(tmp_path, '[model]\nblocks = [{kind = "lse"}]\n'))
    with pytest.raises(ConfigError, match=r"cannot parse"):
        load_config(_write(tmp_path, "[model\n"))
    with pytest.raises(ConfigError, match=r"optimizer: unknown table"):
        load_config(_write(tmp_path, base + "[optimizer]\nlr = 1\n"))


def test_summary_and_repr():
    model = HJLM({"d_model": 16, "blocks": [{"kind": "gru"}, {"kind": "lse", "n_units": 8}]})
    text = model.summary()
    assert "0 gru" in text and "1 lse (n_units=8)" in text and "embedding (tied head)" in text
    total = int(text.splitlines()[-1].split()[-1].replace(",", ""))
    assert total == sum(p.numel() for p in model.parameters())
    per_block = [int(ln.split()[-1].replace(",", "")) for ln in text.splitlines()
                 if ln.strip()[:1].isdigit()]
    assert per_block == [sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    assert "kind='gru'" in repr(model)
    assert model.lm_head.weight is model.embedding.weight  # tied


def test_bad_ids_are_rejected():
    model = HJLM({"d_model": 8, "blocks": [{"kind": "lse"}]})
    with pytest.raises(ValueError, match=r"ids outside \[0, vocab_size=256\)"):
        model(torch.tensor([[1, 256]]))
    with pytest.raises(ValueError, match=r"shape \(B, L\)"):
        model(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 2))


def test_every_documented_option_builds():
    """Each option the config schema accepts is one the block's constructor takes."""
    model = HJLM({"d_model": 16, "blocks": [
        {"kind": "lstm", "bias": False, "dt": 0.5, "eps": 0.1, "backend": "ref", "hidden_size": 8},
        {"kind": "gru", "dt": 0.9}, {"kind": "rnn", "eps": 0.0},
        {"kind": "mamba", "d_state": 4, "d_conv": 3, "expand": 1.5, "dt_rank": 2, "scheme": "zoh",
         "conv_bias": False, "bias": True, "dt_min": 0.01, "dt_max": 0.2, "backend": "ref"},
        {"kind": "attention", "n_heads": 2, "eps": 1.0, "bias": False},
        {"kind": "lse", "n_units": 8, "n_atoms": 2, "eps": 0.0}]})
    assert model.layers[0].mixer.cell.hidden_size == 8
    assert model.layers[3].mixer.d_inner == 24 and model.layers[3].mixer.scheme == "zoh"
    assert model.layers[4].mixer.eps == 1.0 and model.layers[5].mixer.eps == 0.0
    assert model(torch.randint(0, 256, (1, 5))).shape == (1, 5, 256)


def test_saved_configs_keep_their_meaning_across_versions(tmp_path):
    """Attention blocks default to RoPE now; a config saved before config_version 2 (no
    positions then) still loads position-free, and a new save round-trips as it is."""
    from hjseq.models import ModelConfig

    model = HJLM({"d_model": 16, "blocks": [{"kind": "attention", "n_heads": 2}]})
    assert model.layers[0].mixer.pos == "rope"
    saved = model.config.to_dict()
    assert saved["config_version"] == 2
    assert ModelConfig.from_saved(saved).blocks[0].options == {"n_heads": 2}
    legacy = {k: v for k, v in saved.items() if k != "config_version"}
    old = HJLM(ModelConfig.from_saved(legacy))
    assert old.layers[0].mixer.pos == "none"
    model.save_pretrained(tmp_path / "m")
    assert HJLM.from_pretrained(tmp_path / "m").layers[0].mixer.pos == "rope"
    with pytest.raises(ConfigError, match="config_version"):
        load_config({"d_model": 8, "config_version": 9, "blocks": [{"kind": "gru"}]})
