"""``depthmux.cli.main``: --version, usage errors as one line with exit status 2, Ctrl-C as 130."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest
import typer

import depthmux
from depthmux import cli
from depthmux.errors import DepthmuxError


def run_main(argv, capsys):
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_version(capsys):
    code, out, err = run_main(["--version"], capsys)
    assert code == 0 and err == ""
    assert out.strip() == f"depthmux {version('depthmux')}" == f"depthmux {depthmux.__version__}"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["mux", "train", "--bogus"], ["No such option: --bogus", "(see 'depthmux mux train --help')"]),
        (["mux", "trian"], ["No such command 'trian'", "(see 'depthmux mux --help')"]),
        (["nope"], ["No such command 'nope'", "(see 'depthmux --help')"]),
        (["--bogus"], ["No such option: --bogus"]),
        (["mux", "train", "--epochs", "abc"], ["'--epochs'", "integer"]),
        (["mux", "train", "--lr", "fast"], ["'--lr'"]),
        (["mux", "eval"], ["Missing argument"]),
        (["lm", "train"], ["Missing option '--out'"]),
        (["lm", "train", "--out"], ["'--out' requires an argument"]),
        (["mux", "eval", "a", "b"], ["unexpected extra argument"]),
        (["--version=yes"], []),
    ],
)
def test_usage_errors_are_one_line(argv, fragments, capsys):
    code, out, err = run_main(argv, capsys)
    assert_one_line_error(code, err, *fragments)
    assert out == ""


def test_console_command_usage_error_is_one_line():
    """The installed entry point, in a fresh interpreter (what a user types)."""
    proc = subprocess.run(
        [sys.executable, "-m", "depthmux", "mux", "train", "--bogus"], capture_output=True, text=True, timeout=120
    )
    assert_one_line_error(proc.returncode, proc.stderr, "No such option: --bogus")
    proc = subprocess.run([sys.executable, "-m", "depthmux", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"depthmux {version('depthmux')}"


@pytest.mark.parametrize("argv", [[], ["mux"], ["lm"]])
def test_no_command_shows_help_and_exits_2(argv, capsys):
    code, out, err = run_main(argv, capsys)
    assert code == 2 and "Usage" in out + err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--help"], ["mux", "--help"], ["lm", "--help"]])
def test_help_exits_0(argv, capsys):
    code, out, _ = run_main(argv, capsys)
    assert code == 0 and "Usage" in out


@pytest.fixture
def fake_app(monkeypatch):
    """Replace the CLI's app with one whose `go` command runs the given action."""
    actions = {}
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def go() -> None:
        actions["go"]()

    @app.command()
    def other() -> None:
        pass

    monkeypatch.setattr(cli, "app", app)
    return actions


def test_depthmux_error_is_one_line(fake_app, capsys):
    def fail():
        raise DepthmuxError("data file not found: /x/train.tsv\n(while loading the task)")

    fake_app["go"] = fail
    code, _, err = run_main(["go"], capsys)
    assert_one_line_error(code, err)
    assert err.strip() == "error: data file not found: /x/train.tsv (while loading the task)"


def test_ctrl_c_exits_130_with_the_resume_hint(fake_app, capsys):
    def interrupt():
        raise KeyboardInterrupt

    fake_app["go"] = interrupt
    code, _, err = run_main(["go"], capsys)
    assert code == 130 and "rerun the same command with --resume" in err and "Traceback" not in err


def test_a_bug_is_not_disguised_as_a_user_error(fake_app):
    def bug():
        raise RuntimeError("shape mismatch inside depthmux")

    fake_app["go"] = bug
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["go"])


def test_one_line_joins_lines():
    assert cli.one_line("a\n  b\n\nc ") == "a b c"
