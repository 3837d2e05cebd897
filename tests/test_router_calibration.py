"""Calibrated causal thresholds: decoding spends what the capacities say (issue 19, SPEC 4)."""

from __future__ import annotations

import pytest
import torch

from depthmux.data.text import PackedBlocks
from depthmux.errors import DepthmuxError
from depthmux.recursion import RecursiveConfig, calibrate_causal_thresholds, depth_distribution


def _blocks(n: int, T: int, vocab: int, seed: int) -> PackedBlocks:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, T), generator=g)
    pos = torch.arange(T).expand(n, T).clone()
    return PackedBlocks(ids, pos, ids.clone(), n)


def test_calibration_hits_the_capacities_and_the_engine_rule_uses_it(tiny_recursive_factory, tmp_path):
    model = tiny_recursive_factory(
        vocab_size=61, num_hidden_layers=10, num_recursions=4, mor_router="expert", seed=1
    ).eval()
    with torch.no_grad():  # sharper router logits: the default rule (sigmoid > 0.5) misses the capacities
        for lin in model.model.router.routers:
            lin.weight.add_(0.3 * torch.sign(lin.weight))
    cal, held = _blocks(8, 32, 61, 0), _blocks(8, 32, 61, 1)
    caps = model.config.capacities()
    before = depth_distribution(model, held)
    res = calibrate_causal_thresholds(model, cal)
    assert res["before"]["capacities"] == caps == [1.0, 0.75, 0.5, 0.25]
    assert res["after"]["share_per_recursion"] == pytest.approx(caps, abs=1 / 256)  # in-sample: exact up to ties
    after = depth_distribution(model, held)  # another sample: close, not exact
    assert abs(after["average_depth"] - sum(caps)) < abs(before["average_depth"] - sum(caps))
    assert after["share_per_recursion"] == pytest.approx(caps, abs=0.08)
    assert model.config.mor_causal_thresholds == res["thresholds"] and res["thresholds"][0] == 0.0
    # the forward (and so generate and the engine, through route) uses the thresholds; the config round-trips
    out = model(input_ids=held.input_ids[:2], position_ids=held.position_ids[:2], routing="causal")
    assert out.router_stats["tokens_per_recursion"].tolist()[1] > 0
    model.save_pretrained(tmp_path)
    assert RecursiveConfig.from_pretrained(tmp_path).mor_causal_thresholds == res["thresholds"]


def test_thresholds_change_the_causal_rule_only(tiny_recursive_factory):
    model = tiny_recursive_factory(vocab_size=61, mor_router="expert").eval()
    blocks = _blocks(2, 16, 61, 0)
    args = dict(input_ids=blocks.input_ids, position_ids=blocks.position_ids)
    topk, causal = model(**args, routing="topk").logits, model(**args, routing="causal").logits
    model.config.mor_causal_thresholds = [0.0, 1e3]  # nobody continues past recursion 1
    assert torch.equal(model(**args, routing="topk").logits, topk)
    assert depth_distribution(model, blocks)["share_per_recursion"][1] == 0.0
    model.config.mor_causal_thresholds = [0.0, -1e3]  # everybody continues
    assert depth_distribution(model, blocks)["share_per_recursion"] == [1.0, 1.0]
    model.config.mor_causal_thresholds = None
    assert torch.equal(model(**args, routing="causal").logits, causal)


def test_bad_thresholds_and_models(tiny_recursive_factory):
    with pytest.raises(DepthmuxError, match="entries"):
        RecursiveConfig(num_recursions=2, sharing="cycle", num_hidden_layers=4, mor_router="expert",
                        mor_causal_thresholds=[0.0])  # fmt: skip
    with pytest.raises(DepthmuxError, match="finite"):
        RecursiveConfig(num_recursions=2, sharing="cycle", num_hidden_layers=4, mor_router="expert",
                        mor_causal_thresholds=[0.0, float("nan")])  # fmt: skip
    with pytest.raises(DepthmuxError, match="expert-choice"):
        calibrate_causal_thresholds(tiny_recursive_factory(), _blocks(1, 8, 61, 0))


def test_cli_calibrate_router_on_a_trained_tiny_mor(tmp_path):
    import json

    from depthmux.cli import main
    from depthmux.data.text import load_corpus

    corpus = tmp_path / "text.txt"
    corpus.write_text("\n\n".join(load_corpus("kjv")[:60]), encoding="utf-8")
    run = tmp_path / "run"
    main(["lm", "train", "--out", str(run), "--corpus", str(corpus), "--tokenizer", "bpe:300", "--hidden", "32",
          "--layers", "6", "--heads", "2", "--sharing", "middle_cycle", "--recursions", "4", "--router", "expert",
          "--steps", "2", "--block-size", "32", "--batch-size", "2", "--max-eval-blocks", "4", "--no-progress",
          "--holdout", "0.3"])  # fmt: skip
    out = tmp_path / "calibrated"
    main(["lm", "calibrate-router", "--model", str(run), "--out", str(out), "--cal-blocks", "12",
          "--eval-blocks", "6"])  # fmt: skip
    res = json.loads((out / "calibration.json").read_text())
    caps = res["before"]["capacities"]
    assert res["calibration_set_after"]["share_per_recursion"] == pytest.approx(caps, abs=0.01)
    assert abs(res["after"]["average_depth"] - sum(caps)) <= abs(res["before"]["average_depth"] - sum(caps)) + 0.05
    assert RecursiveConfig.from_pretrained(out).mor_causal_thresholds == res["thresholds"]
    with pytest.raises(SystemExit):  # the folder is used now
        main(["lm", "calibrate-router", "--model", str(run), "--out", str(out)])
