"""Every user error of the CLI is one or two lines naming the file, key or flag, and exit
status 2; a real bug keeps its traceback; ``--debug`` / ``HJSEQ_DEBUG=1`` show it always."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _cli_helpers import REPO, TINY, assert_user_error, hjseq


@pytest.mark.parametrize("case", ["missing", "toml_syntax", "unknown_kind", "d_model_0", "lr_neg"])
def test_config_errors(case, tiny_config, tmp_path):
    if case == "missing":
        cfg, names = tmp_path / "nope.toml", ["nope.toml", "no such config file"]
    elif case == "toml_syntax":
        cfg = tiny_config("syntax.toml", ("[train]", "[train"))
        names = ["syntax.toml", "cannot parse"]
    elif case == "unknown_kind":
        cfg = tiny_config("kind.toml", ('{kind = "gru"}', '{kind = "grux"}'))
        names = ["kind.toml", "model.blocks[0].kind", "grux", "mamba"]
    elif case == "d_model_0":
        cfg = tiny_config("d0.toml", ("d_model = 16", "d_model = 0"))
        names = ["d0.toml", "model.d_model", "must be >= 1"]
    else:
        cfg = tiny_config("lr.toml", extra="lr = -0.1\n")
        names = ["lr.toml", "train.lr", "must be > 0"]
    assert_user_error(hjseq("train", cfg, "--out", tmp_path / "run"), *names)
    assert not (tmp_path / "run").exists()


def test_data_path_missing(tiny_config, tmp_path):
    proc = hjseq("train", tiny_config(), "--data", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert_user_error(proc, "--data", "nowhere", "no such file or directory")


def test_data_shorter_than_seq_len_is_refused_before_training(tiny_config, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n" * 6)  # 36 bytes: 25 train, 11 validation, seq_len 32
    proc = hjseq("train", tiny_config(), "--data", short, "--out", tmp_path / "run")
    assert_user_error(proc, "--data", "short.txt", "seq_len = 32", "split holds")
    assert not (tmp_path / "run").exists()  # refused before any step or file


def test_empty_data_file(tiny_config, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    proc = hjseq("train", tiny_config(), "--data", empty, "--out", tmp_path / "run")
    assert_user_error(proc, "--data", "empty.txt", "empty (0 bytes)")


def test_binary_data_is_refused_unless_allowed(tiny_config, tmp_path, corpus):
    import random

    rng = random.Random(0)
    bins = tmp_path / "bins"
    bins.mkdir()
    for i in range(3):  # executable-like: many NULs, invalid UTF-8
        (bins / f"prog{i}").write_bytes(bytes(rng.choice([0, 0, 0, rng.randrange(256)])
                                              for _ in range(20_000)))
    cfg = tiny_config()
    proc = hjseq("train", cfg, "--data", bins, "--out", tmp_path / "run")
    assert_user_error(proc, "--data", "bins", "NUL", "UTF-8", "--allow-binary", "prog")
    one = bins / "prog0"
    assert_user_error(hjseq("train", cfg, "--data", one, "--out", tmp_path / "run"),
                      "prog0", "--allow-binary")
    ok = hjseq("train", cfg, "--data", bins, "--allow-binary", "--max-steps", "2",
               "--out", tmp_path / "run")
    assert ok.returncode == 0, ok.stderr[-2000:]
    # text data is accepted, and the run says which files it read and how many bytes
    ok = hjseq("train", cfg, "--data", corpus, "--max-steps", "1", "--out", tmp_path / "text")
    assert ok.returncode == 0, ok.stderr[-2000:]
    n_files = sum(1 for f in corpus.rglob("*") if f.is_file())
    assert f"read {n_files} file(s)" in ok.stderr and "bisect.py (" in ok.stderr
    assert f"{(corpus / 'bisect.py').stat().st_size:,} B" in ok.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A finished tiny run (checkpoint.pt and model/)."""
    root = tmp_path_factory.mktemp("trained")
    cfg = root / "tiny.toml"
    cfg.write_text(TINY)
    proc = hjseq("train", cfg, "--data", corpus, "--out", root / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "run"


def test_generate_without_a_checkpoint(tmp_path):
    assert_user_error(hjseq("generate", "--checkpoint", tmp_path / "nothing"),
                      "nothing", "no model there")


def test_generate_on_corrupt_checkpoint_pt(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive" * 10)
    assert_user_error(hjseq("generate", "--checkpoint", tmp_path), "checkpoint.pt",
                      "cannot be read as a checkpoint", "corrupt")


def test_generate_on_truncated_safetensors(trained, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    w = model / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    assert_user_error(hjseq("generate", "--checkpoint", model), "model.safetensors",
                      "truncated or corrupt")


def test_config_that_does_not_fit_the_weights_lists_the_keys(trained, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["blocks"][1]["n_atoms"] = 5  # the LSE unit's in_proj has a different shape now
    (model / "config.json").write_text(json.dumps(cfg))
    assert_user_error(hjseq("generate", "--checkpoint", model), "model.safetensors",
                      "shape mismatch", "layers.1.mixer.in_proj.weight")


@pytest.mark.parametrize("flags,name", [(["-n", "-5"], "--max-new-tokens/-n"),
                                        (["--temperature", "-1"], "--temperature")])
def test_generate_bad_arguments(trained, flags, name):
    assert_user_error(hjseq("generate", "--checkpoint", trained, *flags), name, "must be")


def test_generate_runs(trained):
    proc = hjseq("generate", "--checkpoint", trained, "--prompt", "def ", "-n", "5")
    assert proc.returncode == 0 and proc.stdout.startswith("def "), proc.stderr


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    for proc in (hjseq("train", tmp_path / "nope.toml", "--debug"),
                 hjseq("train", tmp_path / "nope.toml", env={"HJSEQ_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback" in proc.stderr
        assert "ConfigError" in proc.stderr and "nope.toml" in proc.stderr


def test_a_real_bug_keeps_its_traceback(tmp_path):
    (tmp_path / "buggy_command.py").write_text(textwrap.dedent("""
        def configure_parser(p):
            pass

        def main(args):
            return {}["a key that is not there"]
    """))
    code = ("import sys; from hjseq import cli; "
            "cli.COMMANDS['buggy'] = ('buggy_command', 'a command with a bug'); "
            "sys.exit(cli.main(['buggy']))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "KeyError" in proc.stderr
