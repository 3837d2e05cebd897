"""The learned exit confidence (CALM's early-exit classifier, issue 19 point 3) on tiny models: the AUC and the
per-threshold table on known inputs; the head's fit lowers the BCE and learns a learnable rule; training on a
model changes only the head; save/load round-trips it and old-format (margin) folders load unchanged;
``ee train-head`` and ``ee sweep-layers`` end to end, and their bad input as one line (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

from depthmux.cli import main
from depthmux.data.text import PackedBlocks, load_corpus, train_bpe_tokenizer
from depthmux.early_exit import (
    L2_GRID,
    EarlyExitConfig,
    EarlyExitForCausalLM,
    ExitConfidenceHead,
    ExitFeatures,
    collect_exit_features,
    collect_layer_features,
    exit_head_report,
    exit_table,
    fit_exit_head,
    from_llama,
    roc_auc,
    train_exit_head,
)
from depthmux.errors import DepthmuxError
from depthmux.lm import load_lm


def test_roc_auc_and_exit_table_on_known_inputs():
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)  # ties count half
    assert roc_auc(torch.tensor([0.9, 0.1]), torch.tensor([1, 0])) == 1.0
    assert roc_auc(torch.tensor([0.3, 0.2]), torch.tensor([1, 1])) is None
    rows = exit_table(torch.tensor([0.2, 0.6, 0.7, 0.95]), torch.tensor([True, False, True, True]), [0.5, 0.9, 1.0])
    assert rows[0] == {"threshold": 0.5, "exit_rate": 0.75, "exit_agreement": pytest.approx(2 / 3),
                       "token_agreement": 0.75}  # fmt: skip
    assert rows[1]["exit_rate"] == 0.25 and rows[1]["exit_agreement"] == 1.0 and rows[1]["token_agreement"] == 1.0
    assert rows[2]["exit_rate"] == 0.0 and rows[2]["exit_agreement"] is None


def synthetic_features(n: int, d: int = 16, seed: int = 0) -> ExitFeatures:
    """States with unequal scales and offsets; label = one fixed linear rule of them (learnable by the head)."""
    rule = torch.randn(d, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 8.0, d)
    x = torch.randn(n, d, generator=g) * scale + 3.0
    return ExitFeatures(x, ((x - 3.0) / scale) @ rule > 0.3, torch.rand(n, generator=g))


def test_fit_lowers_the_bce_and_learns_a_linear_rule():
    train, held = synthetic_features(4000), synthetic_features(2000, seed=1)
    head = ExitConfidenceHead(16)
    seen = []
    fit = fit_exit_head(head, train, steps=200, lr=0.05, token_batch=512, on_step=lambda s, _: seen.append(s))
    losses = fit["losses"]
    assert len(losses) == 200 and sum(losses[-10:]) / 10 < 0.5 * losses[0]
    assert set(fit["validation_bce"]) == set(L2_GRID) and fit["l2"] in L2_GRID
    assert seen == list(range(1, 200 * (len(L2_GRID) + 1) + 1))  # every step of every fit is reported
    rep = exit_head_report(head, held, [0.5, 0.9])
    assert rep["accuracy"] > 0.9 and rep["auc_head"] > 0.95 and 0.4 < rep["auc_margin"] < 0.6  # margin: noise here
    assert rep["head"][1]["exit_agreement"] > 0.95


def test_the_validation_choice_prefers_a_penalty_when_the_head_would_overfit():
    """Few positions, many dimensions, labels unrelated to the states: no penalty fits noise, and the
    validation slice picks the largest penalty; a given ``l2`` skips the choice."""
    g = torch.Generator().manual_seed(0)
    feats = ExitFeatures(torch.randn(300, 64, generator=g), torch.rand(300, generator=g) < 0.2, torch.rand(300))
    fit = fit_exit_head(ExitConfidenceHead(64), feats, steps=150, lr=0.05, token_batch=300)
    assert fit["l2"] > 0 and fit["validation_bce"][fit["l2"]] < fit["validation_bce"][0.0]
    fixed = fit_exit_head(ExitConfidenceHead(64), feats, steps=5, l2=0.0)
    assert fixed["l2"] == 0.0 and fixed["validation_bce"] == {} and len(fixed["losses"]) == 5


def test_fit_rejects_features_of_another_width():
    with pytest.raises(DepthmuxError, match="do not fit a head of width 8"):
        fit_exit_head(ExitConfidenceHead(8), synthetic_features(10), steps=1)


def tiny_ee(factory, layers: int = 4, exit_layer: int = 2) -> EarlyExitForCausalLM:
    model = from_llama(factory(vocab_size=64, num_hidden_layers=layers, seed=3), exit_layer=exit_layer)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # confidences spread; the shallow argmax agrees with the deep one sometimes
    return model.eval()


def random_blocks(n: int, t: int = 24, seed: int = 0) -> PackedBlocks:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n, t), generator=g)
    labels = ids.clone()
    labels[:, 0] = -100
    return PackedBlocks(ids, torch.arange(t).expand(n, t).clone(), labels)


def test_layer_features_match_the_model_forward(tiny_llama_factory):
    model = tiny_ee(tiny_llama_factory)
    blocks = random_blocks(3)
    feats, nll, deep_nll = collect_layer_features(model, blocks, [1, 2, 3], batch_size=2)
    with torch.no_grad():
        out = model(blocks.input_ids, position_ids=blocks.position_ids, labels=blocks.labels, use_cache=False)
    ref = (out.shallow_logits.argmax(-1) == out.logits.argmax(-1))[:, :-1].flatten()
    assert torch.equal(feats[2].agree, ref) and len(feats[2]) == 3 * 23
    assert nll[2] == pytest.approx(float(out.aux_losses["ce_shallow"]), rel=1e-5)
    assert deep_nll == pytest.approx(float(out.aux_losses["ce_deep"]), rel=1e-5)
    assert torch.equal(collect_exit_features(model, blocks).agree, ref)
    with pytest.raises(DepthmuxError, match=r"exit layer L_s must be an integer in 1\.\.3"):
        collect_layer_features(model, blocks, [4])


def test_train_exit_head_changes_only_the_head_and_round_trips(tmp_path, tiny_llama_factory):
    model = tiny_ee(tiny_llama_factory)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_exit_head(model, random_blocks(8), steps=60, lr=0.05, token_batch=64)
    assert model.has_exit_head and model.config.exit_confidence == "head"
    losses = res["losses"]
    assert sum(losses[-10:]) / 10 < losses[0] and 0 < res["train_agreement"] < 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # everything but the head is frozen
    assert set(after) - set(before) == {"exit_head.linear.weight", "exit_head.linear.bias"}

    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["exit_confidence"] == "head"
    loaded = load_lm(tmp_path / "m")
    assert isinstance(loaded, EarlyExitForCausalLM) and loaded.has_exit_head
    h = torch.randn(5, model.config.hidden_size)
    assert torch.equal(loaded.head_confidence(h), model.head_confidence(h))


def test_old_format_models_load_without_a_head(tmp_path, tiny_llama_factory):
    model = tiny_ee(tiny_llama_factory)
    model.save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["exit_confidence"] == "margin"
    del cfg["exit_confidence"]  # a folder saved before the field existed
    cfg_path.write_text(json.dumps(cfg))
    loaded = load_lm(tmp_path / "m")
    assert loaded.config.exit_confidence == "margin" and not loaded.has_exit_head
    assert not any(k.startswith("exit_head") for k in loaded.state_dict())
    with pytest.raises(DepthmuxError, match="has no confidence head"):
        loaded.head_confidence(torch.zeros(1, model.config.hidden_size))
    with pytest.raises(DepthmuxError, match="exit_confidence must be one of margin, head"):
        EarlyExitConfig(exit_layer=1, num_hidden_layers=2, exit_confidence="vibes")


# -- the CLI ------------------------------------------------------------------------------------------------


@pytest.fixture
def ee_dir(tmp_path, corpus, tiny_llama_factory):
    """A tiny 4-layer LLaMA saved with a 300-token BPE tokenizer (``llama/``), and its early-exit conversion
    (exit after 2 layers, ``ee/``)."""
    tok = train_bpe_tokenizer(load_corpus(str(corpus)), 300)
    llama = tiny_llama_factory(vocab_size=len(tok), num_hidden_layers=4, eos_token_id=tok.eos_token_id)
    llama.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    model = from_llama(llama, exit_layer=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(tmp_path / "ee")
    tok.save_pretrained(tmp_path / "ee")
    return tmp_path


def run_cli(args, capsys):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def head_args(ee_dir, corpus, out, *extra):
    return ["ee", "train-head", "--model", ee_dir / "ee", "--out", out, "--corpus", corpus, "--block-size", "16",
            "--train-blocks", "8", "--eval-blocks", "4", "--steps", "40", "--token-batch", "64", "--no-progress",
            *extra]  # fmt: skip


def test_train_head_then_bench_and_generate(tmp_path, ee_dir, corpus, capsys):
    out = tmp_path / "ee-head"
    code, stdout, err = run_cli([*head_args(ee_dir, corpus, out), "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    held = res["held_out"]
    assert res["exit_layer"] == 2 and res["train_positions"] > 0 and held["positions"] > 0
    assert 0.0 <= held["auc_head"] <= 1.0 and 0.0 <= held["accuracy"] <= 1.0
    assert [r["threshold"] for r in held["head"]] == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert res["train_bce_last20"] < res["train_bce_first"] and res["l2"] in L2_GRID
    assert (out / "exit_head.json").is_file() and (out / "tokenizer.json").is_file()
    model = load_lm(out)
    assert model.has_exit_head and model.config.exit_confidence == "head"

    bench = ["ee", "bench", "--model", out, "--corpus", corpus, "--thresholds", "1.0,0.5", "--draft-tokens", "",
             "--batch-sizes", "1", "--prompts", "1", "--prompt-tokens", "6", "--max-new-tokens", "4",
             "--json"]  # fmt: skip
    code, stdout, err = run_cli(bench, capsys)
    assert code == 0, err
    rows = {r["config"]: r for r in json.loads(stdout)["results"]}
    assert json.loads(stdout)["confidence"] == "head"
    assert rows["exit@1.0"]["exact"] == 1.0 and rows["exit@1.0"]["exit_rate"] == 0.0
    code, stdout, err = run_cli([*bench, "--confidence", "margin"], capsys)
    assert code == 0 and json.loads(stdout)["confidence"] == "margin", err
    code, _, err = run_cli([*bench, "--deltas", "0.1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--deltas (the adaptive threshold)" in err

    # a second train-head into the same folder is refused; the folder is untouched
    code, _, err = run_cli(head_args(ee_dir, corpus, out), capsys)
    assert code == 2 and "exists and is not an empty folder" in err


def test_bench_confidence_head_on_a_margin_model_is_one_line(ee_dir, corpus, capsys):
    code, _, err = run_cli(
        ["ee", "bench", "--model", ee_dir / "ee", "--corpus", corpus, "--confidence", "head"], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "needs a model with a trained confidence head" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--steps", "0", "--steps must be an integer >= 1"),
        ("--lr", "0", "--lr must be a finite number in (0.0"),
        ("--lr", "nan", "--lr must be a finite number"),
        ("--train-blocks", "0", "--train-blocks must be an integer >= 1"),
        ("--eval-blocks", "-1", "--eval-blocks must be an integer >= 1"),
        ("--thresholds", "1.5", "exit threshold must be a finite number in"),
        ("--thresholds", "", "--thresholds needs at least one threshold"),
        ("--block-size", "1", "--block-size must be an integer >= 2"),
        ("--l2", "-1", "--l2 must be a finite number"),
        ("--model", "/nonexistent/model", "model not found"),
        ("--model", "{llama}", "without a shallow exit"),
        ("--corpus", "/nonexistent.txt", "nonexistent"),
    ],
)
def test_train_head_bad_input_is_one_line(tmp_path, ee_dir, corpus, capsys, option, value, message):
    out = tmp_path / "out"
    args = [*head_args(ee_dir, corpus, out)]
    if option in args:
        args[args.index(option) + 1] = value.replace("{llama}", str(ee_dir / "llama"))
    else:
        args += [option, value]
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not out.exists()


def test_sweep_layers_measures_every_layer(ee_dir, corpus, capsys):
    args = ["ee", "sweep-layers", "--model", ee_dir / "llama", "--layers", "3,1,2", "--corpus", corpus,
            "--block-size", "16", "--eval-blocks", "3", "--train-blocks", "4", "--head-steps", "5",
            "--no-progress"]  # fmt: skip
    code, stdout, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert [r["exit_layer"] for r in res["layers"]] == [1, 2, 3] and res["num_layers"] == 4
    assert not res["early_exit_model"] and res["positions"] > 0
    for r in res["layers"]:
        assert 0.0 <= r["agreement"] <= 1.0 and r["shallow_nll"] > 0 and len(r["margin"]) == 5
        assert 0.0 <= r["head"]["accuracy"] <= 1.0
        assert all(r["exit_layer"] / 4 <= c <= 1.0 for c in r["layer_compute"])
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and "L_s   2 margin:" in stdout and "L_s   2 head  :" in stdout, err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--layers", "4", "exit layer L_s must be an integer in 1..3"),
        ("--layers", "0", "--layers must be an integer >= 1"),
        ("--layers", "", "--layers needs at least one exit layer"),
        ("--layers", "x", "--layers must be a comma-separated list of ints"),
        ("--head-steps", "-1", "--head-steps must be an integer >= 0"),
        ("--holdout", "0", "--holdout must be a finite number"),
        ("--eval-blocks", "0", "--eval-blocks must be an integer >= 1"),
        ("--model", "/nonexistent/model", "model not found"),
    ],
)
def test_sweep_layers_bad_input_is_one_line(ee_dir, corpus, capsys, option, value, message):
    args = ["ee", "sweep-layers", "--model", ee_dir / "llama", "--corpus", corpus, "--block-size", "16",
            "--no-progress", option, value]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


@pytest.mark.parametrize("cmd", [["ee", "train-head"], ["ee", "sweep-layers"]])
def test_help(cmd, capsys):
    code, out, _ = run_cli([*cmd, "--help"], capsys)
    assert code == 0 and "Usage" in out
