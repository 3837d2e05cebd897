"""``depthmux lm``: nonsense numbers, reused run folders and eval without a run config are one line, exit 2."""

from __future__ import annotations

import json

import pytest

from depthmux.cli import main
from depthmux.errors import DepthmuxError


def run_cli(args, capsys):
    """``(exit status, stdout, stderr)`` of ``depthmux <args>`` (0 when main returns)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_train(out, corpus, *extra):
    return [
        "lm",
        "train",
        "--out",
        str(out),
        "--corpus",
        str(corpus),
        "--tokenizer",
        "bpe:300",
        "--hidden",
        "32",
        "--layers",
        "2",
        "--heads",
        "4",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--block-size",
        "32",
        "--warmup",
        "1",
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    "option,value",
    [
        ("--hidden", "0"),
        ("--layers", "0"),
        ("--heads", "0"),
        ("--steps", "0"),
        ("--steps", "-1"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--lr", "-1e-3"),
        ("--grad-clip", "nan"),
        ("--grad-clip", "-1"),
        ("--weight-decay", "-0.1"),
        ("--batch-size", "0"),
        ("--block-size", "0"),
        ("--block-size", "1"),
        ("--warmup", "-2"),
        ("--decay-fraction", "2"),
        ("--holdout", "1"),
        ("--holdout", "-0.5"),
        ("--recursions", "0"),
        ("--lora-rank", "-1"),
        ("--checkpoint-every", "-1"),
        ("--eval-every", "-1"),
        ("--max-train-blocks", "0"),
        ("--max-eval-blocks", "0"),
        ("--seed", "-1"),
        ("--kv-heads", "3"),
        ("--intermediate", "0"),
        ("--tokenizer", "bpe:x"),
        ("--sharing", "zigzag"),
        ("--router", "magic"),
    ],
)
def test_bad_numbers_fail_up_front(tmp_path, corpus, capsys, option, value):
    out = tmp_path / "run"
    code, _, err = run_cli(tiny_train(out, corpus, option, value), capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err
    assert not (out / "train_config.json").exists()  # rejected before any work


def test_second_run_into_a_folder_and_eval_without_run_config(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(tiny_train(out, corpus), capsys)
    assert code == 0, err
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000003", "step-000004"]
    code, _, err = run_cli(tiny_train(out, corpus), capsys)
    assert code == 2 and "already holds a run: continue it with --resume or choose a new --out" in err
    assert len(err.strip().splitlines()) == 1

    model_only = out / "model"
    code, _, err = run_cli(["lm", "eval", "--model", str(model_only / "..")], capsys)  # the run folder: fine
    assert code == 0, err
    alone = tmp_path / "alone"
    model_only.rename(alone)
    code, _, err = run_cli(["lm", "eval", "--model", str(alone)], capsys)
    assert code == 2 and "has no train_config.json" in err and "--corpus" in err
    code, stdout, err = run_cli(["lm", "eval", "--model", str(alone), "--corpus", str(corpus), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["nll"] > 0


def test_resume_with_truncated_config_is_one_line(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    run_cli(tiny_train(out, corpus), capsys)
    text = (out / "train_config.json").read_text()
    (out / "train_config.json").write_text(text[: len(text) // 2])
    code, _, err = run_cli(["lm", "train", "--out", str(out), "--resume", "--no-progress"], capsys)
    assert code == 2 and "train_config.json is not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_train_loop_config_cuts_a_default_warmup_to_short_runs(tmp_path):
    from depthmux.cli.loop_options import train_loop_config

    cfg = train_loop_config(tmp_path, resume=False, steps=5, warmup=20, batch_size=2)
    assert (cfg.steps, cfg.warmup_steps, cfg.out_dir) == (5, 5, str(tmp_path))
    assert train_loop_config(tmp_path, resume=False, steps=50, warmup=20).warmup_steps == 20
    with pytest.raises(DepthmuxError, match="--warmup"):
        train_loop_config(tmp_path, resume=False, steps=5, warmup=-1)
    # resuming: nothing is validated here (the stored settings are used; a given option that differs from
    # them is refused later), and the cut applies as it did when the run started, so the same command line
    # compares equal
    assert train_loop_config(tmp_path, resume=True, steps=5, warmup=20).warmup_steps == 5
    assert train_loop_config(tmp_path, resume=True, steps=5, warmup=-1).warmup_steps == -1


def test_eval_of_the_packaged_model_needs_a_corpus_and_says_so(capsys):
    """``lm eval --model smollm2`` (the NLL) resolves the packaged model like every other command; it has no
    run config, so the corpus must be given: one line naming --corpus, not "model not found"."""
    code, _, err = run_cli(["lm", "eval", "--model", "smollm2"], capsys)
    assert code == 2 and "give --corpus" in err and "not found" not in err
