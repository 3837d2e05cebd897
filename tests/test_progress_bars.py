"""Long commands show a progress bar with ETA on stderr (``--progress``, on by default), like the training
loops, and ``--no-progress`` turns it off; ``--json`` output on stdout stays parseable either way:
``lm build-mor`` (evaluations and the uptraining), ``lm eval``, ``lm calibrate-router``, ``lm bench-decode``."""

from __future__ import annotations

import json
import re

import pytest

from depthmux.cli import main
from depthmux.data.text import load_corpus, train_bpe_tokenizer

ETA = re.compile(r"\d\d:\d\d<\d\d:\d\d")  # tqdm's "elapsed<remaining"


def run(argv, capsys) -> tuple[str, str]:
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    got = capsys.readouterr()
    return got.out, got.err


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(load_corpus("kjv")[:60]), encoding="utf-8")
    return path


def test_build_mor_shows_the_uptraining_and_every_evaluation(tmp_path, corpus, capsys, monkeypatch, tiny_llama_factory):
    from depthmux.recipes import mor_smollm2

    base = tmp_path / "base"  # a tiny LLaMA standing in for SmolLM2 (6 layers: 4 middle ones, 2 recursions)
    tok = train_bpe_tokenizer(load_corpus(str(corpus)), 300)
    tiny_llama_factory(vocab_size=len(tok), num_hidden_layers=6).save_pretrained(base)
    tok.save_pretrained(base)
    monkeypatch.setattr(mor_smollm2, "smollm2_path", lambda: base)
    argv = ["lm", "build-mor", "--corpus", corpus, "--recursions", "2", "--steps", "3", "--batch-size", "2",
            "--block-size", "32", "--eval-blocks", "2"]  # fmt: skip
    out, err = run([*argv, "--out", tmp_path / "mor"], capsys)
    assert "held-out NLL" in out and "model in" in out and "\r" not in out
    assert re.search(r"train: 100%.*3/3 \[" + ETA.pattern, err), err  # the training loop's bar, with ETA
    for desc in (
        "eval SmolLM2",
        "eval recursive",
        "eval MoR before uptraining",
        "eval MoR (causal)",
        "eval MoR (top-k)",
    ):
        assert desc in err, desc
    _, err = run([*argv, "--out", tmp_path / "quiet", "--no-progress"], capsys)
    assert "train:" not in err and "eval" not in err


@pytest.fixture
def tiny_mor_run(tmp_path, corpus):
    run_dir = tmp_path / "run"
    main(["lm", "train", "--out", str(run_dir), "--corpus", str(corpus), "--tokenizer", "bpe:300", "--hidden", "32",
          "--layers", "6", "--heads", "2", "--sharing", "middle_cycle", "--recursions", "4", "--router", "expert",
          "--steps", "2", "--block-size", "32", "--batch-size", "2", "--max-eval-blocks", "4", "--no-progress",
          "--holdout", "0.3"])  # fmt: skip
    return run_dir


def test_eval_and_calibrate_router_bars_leave_json_clean(tiny_mor_run, tmp_path, capsys):
    out, err = run(["lm", "eval", "--model", tiny_mor_run, "--json", "--batch-size", "1"], capsys)
    assert json.loads(out)["nll"] > 0
    assert "eval causal" in err and "eval topk" in err and "batch" in err
    out, err = run(["lm", "eval", "--model", tiny_mor_run, "--json", "--no-progress"], capsys)
    assert json.loads(out)["nll"] > 0 and "eval" not in err
    argv = ["lm", "calibrate-router", "--model", tiny_mor_run, "--cal-blocks", "4", "--eval-blocks", "2", "--json"]
    out, err = run([*argv, "--out", tmp_path / "cal"], capsys)
    assert json.loads(out)["thresholds"]
    assert re.search(r"calibrate-router: 100%.*7/7 \[" + ETA.pattern, err), err  # 6 measuring passes + 1 fit
    assert err.index("before:") < err.index("after:")  # the log lines print above the bar
    _, err = run([*argv, "--out", tmp_path / "cal2", "--no-progress"], capsys)
    assert "calibrate-router" not in err


def test_bench_decode_bar_counts_every_run(tmp_path, capsys, tiny_llama_factory, tiny_recursive_factory):
    tiny_llama_factory(vocab_size=64, num_hidden_layers=4, max_position_embeddings=64).save_pretrained(tmp_path / "v")
    tiny_recursive_factory(
        vocab_size=64, num_hidden_layers=4, num_recursions=2, mor_router="expert", max_position_embeddings=64
    ).save_pretrained(tmp_path / "m")
    argv = ["lm", "bench-decode", "--model", tmp_path / "v", "--mor-model", tmp_path / "m", "--num-requests", "3",
            "--prompt-len", "3-6", "--output-len", "2-3", "--batch", "2", "--repeats", "1", "--json"]  # fmt: skip
    out, err = run(argv, capsys)
    assert json.loads(out)["configs"]
    assert re.search(r"bench-decode: 100%.*9/9 \[" + ETA.pattern, err), err  # 6 timed + 2 FLOP runs + the KV run
    _, err = run([*argv, "--no-progress"], capsys)
    assert "bench-decode:" not in err and "workload:" in err
