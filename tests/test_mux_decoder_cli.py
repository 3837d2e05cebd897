"""``depthmux mux train --model <LLaMA folder> --teacher verbalizer`` end to end (tiny random model, the
embedded tweets): the teacher is the LM head on the label words after the task prompt, the
checkpoints reload with their prompt, and an encoder given the verbalizer is one line."""

from __future__ import annotations

import json

import pytest

from depthmux.cli import main
from depthmux.multiplexing import TASK_VERBALIZERS
from tiny_families import save_family


def test_verbalizer_teacher_through_the_cli(tmp_path, tokenizer, capsys):
    folder = save_family("llama", tmp_path / "llama", tokenizer, layers=2)
    out = tmp_path / "run"
    args = [
        "mux",
        "train",
        "--model",
        str(folder),
        "--teacher",
        "verbalizer",
        "--task",
        "tweets",
        "--n",
        "2",
        "--prefill-layers",
        "1",
        "--max-train",
        "64",
        "--epochs",
        "1",
        "--no-bench",
        "--shuffles",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    main(args)
    rows = json.loads(capsys.readouterr().out)
    assert [r["n"] for r in rows] == [1, 2]
    state = json.loads((out / "teacher" / "state.json").read_text())
    assert state["head"]["kind"] == "verbalizer" and state["head"]["label_words"] == [" negative", " positive"]
    assert state["config"]["prompt"] == TASK_VERBALIZERS["tweets"].prompt and state["config"]["readout"] == "last"
    main(["mux", "eval", str(out / "n2-l1-reversible" / "best"), "--shuffles", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["prompt"] == TASK_VERBALIZERS["tweets"].prompt and report["mux"]["shuffles"] == 2


@pytest.mark.parametrize(
    "family, extra, message",
    [
        ("bert", ["--teacher", "verbalizer"], "has no language-model head: a verbalizer needs a decoder-only"),
        ("llama", ["--n", "5"], "N=5 does not divide the hidden size 48"),
    ],
)
def test_bad_decoder_or_verbalizer_settings_are_one_line(tmp_path, tokenizer, capsys, family, extra, message):
    folder = save_family(family, tmp_path / family, tokenizer, layers=1)
    with pytest.raises(SystemExit) as exit_:
        main(["mux", "train", "--model", str(folder), "--task", "tweets", "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err


@pytest.mark.parametrize("family", ["llama", "t5", "deberta-v2"])
def test_mux_bench_runs_on_other_families(tmp_path, tokenizer, capsys, family):
    folder = save_family(family, tmp_path / family, tokenizer, layers=2)
    main(
        [
            "mux",
            "bench",
            "--model",
            str(folder),
            "--n",
            "2",
            "--prefill-layers",
            "1",
            "--samples",
            "8",
            "--batch-size",
            "4",
            "--repetitions",
            "1",
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 2 and result["num_layers"] == 2 and result["ceiling"] == pytest.approx(2 / 1.5)
