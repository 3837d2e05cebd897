"""Issue 20/21 on the lm/ee side: the one model-folder check (``depthmux.utils.checks.check_model_folder``)
and that every loader runs it (the message names the broken file), a folder without tokenizer files,
``--resume`` comparing the options given on the command line, output paths checked up front, and the
prompt-file messages of ``lm generate``. The bad invocations themselves are rows of tests/test_bad_inputs.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from depthmux.cli import main
from depthmux.errors import DepthmuxError
from depthmux.utils.checks import check_model_folder, check_output_file, check_safetensors_file

DEFECTS = {
    "truncated": "model.safetensors is truncated",
    "garbage": "model.safetensors is not a safetensors file",
    "heads_zero": "config.json: num_attention_heads must be a positive integer, got 0",
    "vocab_string": "config.json: vocab_size must be a positive integer, got '64'",
    "hidden_not_divisible": "config.json: hidden_size 30 is not a multiple of num_attention_heads 4",
    "no_config": "has no config.json",
    "bad_json": "config.json is not valid JSON",
    "config_not_object": "config.json does not hold a JSON object",
    "no_weights": "has no weights",
}


def make_broken(src: Path, dest: Path, defect: str) -> Path:
    shutil.copytree(src, dest)
    weights, config = dest / "model.safetensors", dest / "config.json"
    cfg = json.loads(config.read_text())
    if defect == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif defect == "garbage":
        weights.write_bytes(bytes(range(256)) * 64)
    elif defect == "heads_zero":
        config.write_text(json.dumps({**cfg, "num_attention_heads": 0}))
    elif defect == "vocab_string":
        config.write_text(json.dumps({**cfg, "vocab_size": "64"}))
    elif defect == "hidden_not_divisible":
        config.write_text(json.dumps({**cfg, "hidden_size": 30}))
    elif defect == "no_config":
        config.unlink()
    elif defect == "bad_json":
        config.write_text('{"model_type": "llama", "hidden_si')
    elif defect == "config_not_object":
        config.write_text("[1, 2]")
    elif defect == "no_weights":
        weights.unlink()
    return dest


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from conftest import build_tiny_llama

    path = tmp_path_factory.mktemp("llama") / "llama"
    build_tiny_llama(num_hidden_layers=4).save_pretrained(path)
    return path


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_check_model_folder_names_the_file_and_the_defect(llama_dir, tmp_path, defect):
    assert check_model_folder(llama_dir)["model_type"] == "llama"  # the intact folder passes
    bad = make_broken(llama_dir, tmp_path / "m", defect)
    with pytest.raises(DepthmuxError) as e:
        check_model_folder(bad)
    assert DEFECTS[defect] in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value)


def test_safetensors_check_catches_a_wrong_tensor_size_and_trailing_bytes(llama_dir, tmp_path):
    raw = (llama_dir / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [*header[name]["shape"], 2]  # twice the elements its byte range holds
    text = json.dumps(header).encode()
    planted = tmp_path / "wrong-shape.safetensors"
    planted.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    with pytest.raises(DepthmuxError, match=f"tensor '{name}'.*expected"):
        check_safetensors_file(planted)
    extra = tmp_path / "extra.safetensors"
    extra.write_bytes(raw + b"\0" * 16)
    with pytest.raises(DepthmuxError, match="16 bytes after its last tensor"):
        check_safetensors_file(extra)
    check_safetensors_file(llama_dir / "model.safetensors")


def _loaders(llama_dir: Path, ee_dir: Path, rec_dir: Path):
    """Every function that turns a user's folder into a model: (name, intact folder, call)."""
    from transformers import AutoModelForCausalLM

    from depthmux.backbones import load_backbone
    from depthmux.backbones.loading import load_hf_model
    from depthmux.early_exit import from_llama, load_early_exit_model
    from depthmux.engine import LLM
    from depthmux.lm import load_lm
    from depthmux.recursion import convert_llama_to_recursive, load_recursive_model

    return [
        ("load_hf_model", llama_dir, lambda d: load_hf_model(d, AutoModelForCausalLM)),
        ("load_lm", llama_dir, load_lm),
        ("load_lm(recursive)", rec_dir, load_lm),
        ("load_lm(early exit)", ee_dir, load_lm),
        ("load_recursive_model", rec_dir, load_recursive_model),
        ("load_early_exit_model", ee_dir, load_early_exit_model),
        ("convert_llama_to_recursive", llama_dir, lambda d: convert_llama_to_recursive(d, 2, sharing="cycle")),
        ("from_llama", llama_dir, lambda d: from_llama(d, exit_layer=1)),
        ("load_backbone", llama_dir, load_backbone),
        ("LLM.from_pretrained", llama_dir, LLM.from_pretrained),
    ]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, llama_dir):
    from conftest import build_tiny_recursive
    from depthmux.early_exit import from_llama

    root = tmp_path_factory.mktemp("models")
    from_llama(llama_dir, exit_layer=1).save_pretrained(root / "ee")
    build_tiny_recursive().save_pretrained(root / "rec")
    return root / "ee", root / "rec"


@pytest.mark.parametrize("defect", ["truncated", "garbage", "heads_zero", "vocab_string", "hidden_not_divisible"])
def test_every_loader_runs_the_one_check(llama_dir, model_dirs, tmp_path, defect):
    """Before issue 20/21 the loaders of ``lm convert``/``ee train`` and of early-exit and recursive models
    answered a broken folder with "cannot load ...: SafetensorError: ..." (no file named), the others with
    a traceback; every one now gives the check's line, naming the file."""
    for name, src, load in _loaders(llama_dir, *model_dirs):
        bad = make_broken(src, tmp_path / f"{name}-{defect}", defect)
        with pytest.raises(DepthmuxError) as e:
            load(bad)
        assert DEFECTS[defect] in str(e.value) and str(bad) in str(e.value), (name, str(e.value))


def test_a_backbone_folder_without_tokenizer_files_is_refused(tmp_path):
    """transformers builds a 5-token tokenizer from a config alone (every word [UNK]): refused instead."""
    from transformers import BertConfig, BertModel

    from depthmux.backbones import load_backbone
    from depthmux.lm import load_saved_tokenizer

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    with pytest.raises(DepthmuxError, match=r"has no tokenizer \(none of tokenizer\.json, vocab\.txt"):
        load_backbone(tmp_path / "bert")
    (tmp_path / "bert" / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    assert load_saved_tokenizer(tmp_path / "bert") is None  # a config without a vocabulary is no tokenizer


# ------------------------------------------------------------------------------------- --resume


def test_every_training_option_maps_to_a_stored_setting():
    """--resume compares a given option with the stored field it fills: each option must have one."""
    from dataclasses import fields

    import typer

    from depthmux.cli import ee, lm
    from depthmux.cli.loop_options import setting_keys
    from depthmux.recipes.early_exit import EEModelSpec
    from depthmux.recipes.lm import LMDataSpec, LMModelSpec
    from depthmux.training.lm import LMTrainConfig

    for app, spec in ((lm.app, LMModelSpec), (ee.app, EEModelSpec)):
        command = typer.main.get_command(app).commands["train"]
        names = {p.name for p in command.params if p.param_type_name == "option"}  # typer has its own click
        sections = {"train": LMTrainConfig(out_dir="x"), "data": LMDataSpec(), "model": spec()}
        keys = setting_keys(names, sections)
        assert len(keys) == len(names - {"out", "resume", "progress"}) >= 18
        assert {f.name for f in fields(spec)} - {k.split(".")[1] for k in keys} <= {"seed"}
    with pytest.raises(KeyError, match="bogus"):
        setting_keys({"bogus"}, sections)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(
        "\n\n".join(f"paragraph {i}: " + " ".join(f"w{(i + j) % 13}" for j in range(30)) for i in range(20))
    )
    return path


def run_cli(args, capsys):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


def test_lm_resume_compares_only_the_options_given(tmp_path, corpus, capsys):
    base = ["lm", "train", "--corpus", corpus, "--tokenizer", "bpe:300", "--hidden", "32", "--layers", "2",
            "--heads", "4", "--batch-size", "2", "--block-size", "16", "--no-progress"]  # fmt: skip
    run = tmp_path / "run"
    assert run_cli([*base, "--out", run, "--steps", "2", "--lr", "0.001", "--warmup", "20"], capsys)[0] == 0
    code, err = run_cli(["lm", "train", "--out", run, "--resume", "--steps", "8", "--lr", "0.5"], capsys)
    assert code == 2 and "lr (stored 0.001, given 0.5), steps (stored 2, given 8)" in err, err
    code, err = run_cli(["lm", "train", "--out", run, "--resume", "--hidden", "64", "--corpus", "shakespeare"], capsys)
    assert code == 2 and "corpus (stored" in err and "hidden (stored 32, given 64)" in err, err
    # the first command line again (its warmup was cut to --steps as stored), or --resume alone: accepted
    assert run_cli([*base, "--out", run, "--steps", "2", "--lr", "0.001", "--warmup", "20", "--resume"], capsys)[0] == 0
    assert run_cli(["lm", "train", "--out", run, "--resume", "--no-progress"], capsys)[0] == 0


def test_ee_resume_compares_the_resolved_exit_layer(tmp_path, corpus, capsys):
    from conftest import build_tiny_llama
    from depthmux.data.text import load_corpus, train_bpe_tokenizer

    tok = train_bpe_tokenizer(load_corpus(str(corpus)), 300)
    src = tmp_path / "llama"
    build_tiny_llama(vocab_size=len(tok), num_hidden_layers=4, eos_token_id=tok.eos_token_id).save_pretrained(src)
    tok.save_pretrained(src)
    run = tmp_path / "run"
    args = ["ee", "train", "--out", run, "--from", src, "--corpus", corpus, "--steps", "1", "--batch-size", "2",
            "--block-size", "16", "--no-progress"]  # fmt: skip
    assert run_cli(args, capsys)[0] == 0  # default exit layer: a quarter of 4 layers = 1
    code, err = run_cli(["ee", "train", "--out", run, "--resume", "--alpha", "2", "--exit-layer", "3"], capsys)
    assert code == 2 and "alpha (stored 0.5, given 2.0), exit_layer (stored 1, given 3)" in err, err
    assert run_cli(["ee", "train", "--out", run, "--resume", "--exit-layer", "1", "--no-progress"], capsys)[0] == 0


# --------------------------------------------------------------------------------- inputs, outputs


def test_prompt_files_name_the_problem(tmp_path, llama_dir, capsys):
    cases = {
        tmp_path: "is a folder",
        tmp_path / "missing.txt": "no such file",
        tmp_path / "latin1.txt": "is not UTF-8 text (byte 0xe9 at offset 3)",
        tmp_path / "nul.txt": "holds NUL bytes (offset 1)",
    }
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "nul.txt").write_bytes(b"a\x00b\n")
    for path, message in cases.items():
        code, err = run_cli(["lm", "generate", "--model", llama_dir, "--file", path], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_output_file_checks(tmp_path):
    check_output_file("--plot", tmp_path / "new" / "plot.png", {"png"})
    assert (tmp_path / "new").is_dir() and not any((tmp_path / "new").iterdir())  # the probe is gone
    for path, message in (
        (tmp_path, "is a folder"),
        (tmp_path / "plot.bogus", "unknown file type .bogus"),
        (tmp_path / "plot", "unknown file type (no extension)"),
    ):
        with pytest.raises(DepthmuxError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_output_file("--plot", path, {"png", "pdf"})
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DepthmuxError, match="cannot write in"):
        check_output_file("--plot", tmp_path / "a-file" / "plot.png", {"png"})
