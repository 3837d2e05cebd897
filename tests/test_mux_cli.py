"""The CLI: help texts, and one-line errors (exit status 2) instead of tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from depthmux.cli import main


def run_cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["mux", "--help"],
        ["mux", "train", "--help"],
        ["mux", "eval", "--help"],
        ["mux", "bench", "--help"],
        ["mux", "run", "--help"],
    ],
)
def test_help(args, capsys):
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "Usage" in out


def test_bad_n_is_one_line(capsys):
    code, _, err = run_cli(["mux", "bench", "--n", "5", "--samples", "4"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "N=5 does not divide the hidden size 384" in err


def test_bad_prefill_is_one_line(capsys):
    code, _, err = run_cli(["mux", "bench", "--prefill-layers", "6", "--samples", "4"], capsys)
    assert code == 2 and "prefill layers l=6 must satisfy 0 <= l < 6" in err


def test_missing_model_path_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(["mux", "bench", "--model", str(tmp_path / "none")], capsys)
    assert code == 2 and err.startswith("error: model path not found")


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "depthmux", "mux", "eval", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'none'}"
