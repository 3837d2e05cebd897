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
    assert res["on"] == "corpus" and len(res["rounds"]) == 1 and res["before_generated"]["tokens"] == 6 * 15
    # fitted on the model's own continuations of the calibration prompts, two rounds
    gen = tmp_path / "calibrated-gen"
    main(["lm", "calibrate-router", "--model", str(run), "--out", str(gen), "--cal-blocks", "12",
          "--eval-blocks", "6", "--on", "generated", "--prompt-tokens", "10", "--rounds", "2"])  # fmt: skip
    res = json.loads((gen / "calibration.json").read_text())
    assert res["on"] == "generated" and res["prompt_tokens"] == 10 and len(res["rounds"]) == 2
    fitted = res["rounds"][-1]["fitted_on"]
    assert fitted["tokens"] == 12 * 21 and fitted["share_per_recursion"] == pytest.approx(caps, abs=0.01)
    assert res["after_generated"]["tokens"] == 6 * 21
    assert RecursiveConfig.from_pretrained(gen).mor_causal_thresholds == res["rounds"][-1]["thresholds"]
    for bad in (["--on", "text"], ["--rounds", "0"], ["--prompt-tokens", "31"]):
        with pytest.raises(SystemExit) as e:
            main(["lm", "calibrate-router", "--model", str(run), "--out", str(tmp_path / "x"), *bad])
        assert e.value.code == 2


@pytest.mark.parametrize("policy", ["depthwise", "lockstep"])
def test_generated_blocks_measure_what_the_engine_decodes(tiny_recursive_factory, policy):
    """The shortcut (teacher-forcing the model's own continuations, counting the generated tokens) equals
    the real path: the engine's tokens and its decode-time depth per token, for calibrated thresholds too."""
    from depthmux.engine import LLM, SamplingParams
    from depthmux.recursion import generated_blocks

    model = tiny_recursive_factory(
        vocab_size=61, num_hidden_layers=10, num_recursions=4, mor_router="expert", seed=1
    ).eval()
    with torch.no_grad():
        for lin in model.model.router.routers:
            lin.weight.add_(0.3 * torch.sign(lin.weight))
    prompts = _blocks(6, 7, 61, 3).input_ids
    for thresholds in (None, [0.0, 0.4, -0.2, 0.1]):
        model.config.mor_causal_thresholds = thresholds
        blocks, counted = generated_blocks(model, prompts, new_tokens=9, batch_size=4)
        assert blocks.input_ids.shape == (6, 16) and int(counted.sum()) == 6 * 8
        assert torch.equal(blocks.input_ids[:, :7], prompts)
        llm = LLM(model, depth_policy=policy, max_batch_items=5)
        outs = llm.generate(prompts.tolist(), SamplingParams(max_new_tokens=9, ignore_eos=True))
        assert [o.token_ids for o in outs] == blocks.input_ids[:, 7:].tolist()
        exits = llm.stats.decode_exits_by_depth  # decode tokens by recursions run
        assert sum(exits) == 6 * 8
        shares = [sum(exits[d] for d in range(r + 1, len(exits))) / sum(exits) for r in range(4)]
        measured = depth_distribution(model, blocks, counted=counted)
        assert measured["share_per_recursion"] == pytest.approx(shares, abs=1e-9)
        assert measured["average_depth"] == pytest.approx(llm.stats.average_depth(decode_only=True))
        # the prompt tokens count in exits_by_depth, not in the decode-only counts
        assert sum(llm.stats.exits_by_depth) == 6 * 8 + 6 * 7


def test_calibrating_on_generated_tokens_fits_those_tokens(tiny_recursive_factory):
    from depthmux.recursion import generated_blocks

    model = tiny_recursive_factory(
        vocab_size=61, num_hidden_layers=10, num_recursions=4, mor_router="expert", seed=1
    ).eval()
    blocks, counted = generated_blocks(model, _blocks(8, 6, 61, 4).input_ids, new_tokens=25)
    res = calibrate_causal_thresholds(model, blocks, counted=counted)
    assert res["after"]["tokens"] == int(counted.sum()) == 8 * 24
    assert res["after"]["share_per_recursion"] == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1 / 190)
    everything = depth_distribution(model, blocks)  # prompts included: another population
    assert everything["tokens"] == 8 * 31
    with pytest.raises(DepthmuxError, match="counted has shape"):
        depth_distribution(model, blocks, counted=counted[:, :5])
