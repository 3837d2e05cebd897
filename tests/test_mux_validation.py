"""`depthmux mux train/eval/bench/run`: every numeric option is checked up front, before the
feature cache is built (one line, exit 2); --out is checked writable first; --resume refuses
other settings (issue 7 items 6-8)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

import depthmux.recipes.mux as recipe
from depthmux.cli import main
from depthmux.errors import DepthmuxError
from depthmux.recipes.mux import ExperimentConfig, MuxBenchConfig, MuxEvalConfig, MuxTrainConfig, run_experiment
from depthmux.utils.run_folder import RunFolder


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if a command gets as far as caching features or loading data."""

    def forbidden(*args, **kwargs):
        raise AssertionError("reached the feature cache: the option should have been refused before")

    monkeypatch.setattr(recipe, "build_feature_cache", forbidden)
    monkeypatch.setattr(recipe, "load_task", forbidden)


def run_cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BAD = [
    (["train", "--lr", "nan"], "--lr must be a finite number in (0.0, 1.0], got nan"),
    (["train", "--lr", "inf"], "--lr must be a finite number"),
    (["train", "--lr", "0"], "--lr must be a finite number"),
    (["train", "--lr", "-1e-3"], "--lr must be a finite number"),
    (["train", "--tau", "0"], "--tau must be a finite number in [0.001, 10.0], got 0.0"),
    (["train", "--tau", "nan"], "--tau must be a finite number"),
    (["train", "--lambda-info", "-0.5"], "--lambda-info must be a finite number in [0.0, 100.0], got -0.5"),
    (["train", "--lambda-info", "nan"], "--lambda-info must be a finite number"),
    (["train", "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["train", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["train", "--max-train", "-5"], "--max-train must be >= 1 (or 0 for the whole train split), got -5"),
    (["train", "--n", "0"], "--n must be an integer >= 1, got 0"),
    (["train", "--n", "-2"], "--n must be an integer >= 1, got -2"),
    (["train", "--n", "2,x"], "--n must be comma-separated integers"),
    (["train", "--prefill-layers", "-1"], "--prefill-layers must be an integer >= 0, got -1"),
    (["train", "--mixer", "magic"], "unknown mixer 'magic'"),
    (["train", "--shuffles", "0"], "--shuffles must be an integer >= 1, got 0"),
    (["train", "--bench-samples", "0"], "--bench-samples must be an integer >= 1, got 0"),
    (["train", "--repetitions", "0"], "--repetitions must be an integer >= 1, got 0"),
    (["train", "--seed", "-1"], "--seed must be an integer in [0, 4294967295], got -1"),
    (["train", "--task", "cola"], "unknown task 'cola'"),
    (["train", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["train", "--n", "5"], "N=5 does not divide the hidden size 384"),
    (["train", "--prefill-layers", "6"], "prefill layers l=6 must satisfy 0 <= l < 6"),
    (["run", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["bench", "--samples", "0"], "--samples must be an integer >= 1, got 0"),
    (["bench", "--repetitions", "0"], "--repetitions must be an integer >= 1, got 0"),
    (["bench", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["bench", "--n", "1"], "--n must be an integer >= 2, got 1"),
    (["bench", "--n", "0"], "--n must be an integer >= 2, got 0"),
    (["bench", "--prefill-layers", "-1"], "--prefill-layers must be an integer >= 0, got -1"),
    (["bench", "--mixer", "magic"], "unknown mixer 'magic'"),
    (["bench", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["eval", "CKPT", "--shuffles", "0"], "--shuffles must be an integer >= 1, got 0"),
    (["eval", "CKPT", "--split", "test"], "--split must be dev or validation, got 'test'"),
    (["eval", "CKPT", "--task", "cola"], "unknown task 'cola'"),
    (["eval", "CKPT", "--seed", "-3"], "--seed must be an integer in [0, 4294967295], got -3"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_numeric_option_is_one_line_before_any_work(args, message, capsys, tmp_path, no_work):
    args = [a.replace("CKPT", str(tmp_path / "ckpt")) for a in args]
    code, _, err = run_cli(["mux", *args, *(["--out", str(tmp_path / "out")] if args[0] == "train" else [])], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_read_only_out_is_one_line_before_any_work(tmp_path, capsys, no_work):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["mux", "train", "--out", str(blocker / "run")], capsys)
    assert code == 2 and err.startswith(f"error: cannot write to {blocker / 'run'}") and err.count("\n") == 1


def test_config_validate_checks_the_python_api_too():
    with pytest.raises(DepthmuxError, match="--lr must be a finite number"):
        ExperimentConfig(train=MuxTrainConfig(lr=float("nan"))).validate()
    with pytest.raises(DepthmuxError, match="--samples must be an integer >= 1"):
        MuxBenchConfig(samples=0).validate()
    with pytest.raises(DepthmuxError, match="--shuffles must be an integer >= 1"):
        MuxEvalConfig("x", shuffles=0).validate()
    with pytest.raises(DepthmuxError, match="--epochs must be an integer >= 1"):
        MuxTrainConfig(epochs=0).validate()
    assert ExperimentConfig().validate() is not None


@pytest.mark.parametrize(
    "change, named",
    [
        ({"task": "sst2"}, "task (stored tweets, given sst2)"),
        ({"ns": [4]}, "ns (stored [2], given [4])"),
        ({"prefill_layers": [1]}, "prefill_layers (stored [0], given [1])"),
        ({"mixers": ["vanilla"]}, "mixers"),
        ({"train": MuxTrainConfig(lr=2e-3)}, "lr (stored 0.001, given 0.002)"),
        ({"train": MuxTrainConfig(epochs=7)}, "epochs (stored 3, given 7)"),
    ],
)
def test_resume_with_other_settings_refuses_naming_the_mismatch(tmp_path, change, named, no_work):
    stored = ExperimentConfig(out_dir=str(tmp_path))
    with RunFolder(tmp_path).lock() as run:  # a run's folder: its marker, then its settings
        run.write_json("experiment", asdict(stored))
    given = ExperimentConfig(**{**stored.__dict__, **change, "resume": True})
    with pytest.raises(DepthmuxError, match=r"--resume: .* was started with a different ") as err:
        run_experiment(given)
    assert named in str(err.value)


def test_resume_without_an_experiment_and_fresh_run_over_one(tmp_path, no_work):
    with pytest.raises(DepthmuxError, match="holds no mux experiment to resume"):
        run_experiment(ExperimentConfig(out_dir=str(tmp_path), resume=True))
    (tmp_path / "experiment.json").write_text(json.dumps(asdict(ExperimentConfig(out_dir=str(tmp_path)))))
    with pytest.raises(DepthmuxError, match="already holds a mux experiment: continue it with --resume"):
        run_experiment(ExperimentConfig(out_dir=str(tmp_path)))


def test_second_run_into_a_locked_folder_is_one_line(tmp_path, no_work):
    with RunFolder(tmp_path).lock(), pytest.raises(DepthmuxError, match="is in use by another run"):
        run_experiment(ExperimentConfig(out_dir=str(tmp_path)))


def test_seed_out_of_range_is_one_line(capsys, tmp_path, no_work):
    code, _, err = run_cli(["mux", "train", "--seed", "99999999999999999999", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--seed must be an integer in [0, 4294967295]" in err
