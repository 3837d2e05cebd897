"""``depthmux lm``: --help for every command, a 3-step train whose checkpoint ``lm eval`` reloads."""

import json

import pytest
from typer.testing import CliRunner

from depthmux.cli.lm import app
from depthmux.errors import DepthmuxError

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["train"], ["eval"], ["convert"]])
def test_help(cmd):
    res = runner.invoke(app, cmd + ["--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_root_registers_lm(capsys):
    from depthmux.cli import main

    try:
        main(["lm", "--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "train" in capsys.readouterr().out


def test_train_then_eval(tmp_path, corpus):
    out = tmp_path / "run"
    args = [
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
        "4",
        "--heads",
        "4",
        "--sharing",
        "middle_cycle",
        "--recursions",
        "2",
        "--router",
        "expert",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--block-size",
        "32",
        "--warmup",
        "1",
        "--no-progress",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "held-out NLL" in res.output
    assert (out / "checkpoints" / "step-000003" / "model" / "config.json").is_file()
    assert (out / "model" / "tokenizer.json").is_file()
    res = runner.invoke(app, ["eval", "--model", str(out), "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    result = json.loads(res.stdout)
    assert result["nll"] > 0 and len(result["topk"]["router_stats"]["causal_agreement"]) == 2
    res = runner.invoke(app, ["eval", "--model", str(out / "checkpoints" / "step-000003")])
    assert res.exit_code == 0 and "agreement" in res.output
    # resume of a finished run is a no-op that still reloads everything
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)


def test_cli_errors(tmp_path):
    res = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "r"),
            "--corpus",
            str(tmp_path / "missing.txt"),
            "--tokenizer",
            "bpe:300",
            "--steps",
            "1",
            "--no-progress",
        ],
    )
    assert isinstance(res.exception, DepthmuxError) and "not found" in str(res.exception)
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "nothing")])
    assert isinstance(res.exception, DepthmuxError)
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r2"), "--resume", "--no-progress"])
    assert isinstance(res.exception, DepthmuxError) and "no checkpoint" in str(res.exception)
