"""The hostile pass (``scripts/hostile_pass.py``) keeps working: its classifier and snapshots on planted
results, and a handful of real cases run end to end through its workers (the full pass is minutes and
not part of the default suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import hostile_cases as hc  # noqa: E402
import hostile_pass as hp  # noqa: E402


def _case(expect="error", **kw):
    return hc.Case("planted", ["mux", "train"], expect, **kw)


@pytest.mark.parametrize(
    ("expect", "result", "cls"),
    [
        ("error", {"code": 2, "stderr": "error: bad --n\n"}, "clear-error"),
        ("error", {"code": 0, "stderr": ""}, "silent"),
        ("error", {"code": 2, "stderr": "warning: x\nerror: bad --n\n"}, "unclear"),
        ("error", {"code": 2, "stderr": "Traceback (most recent call last):\n  File x\nKeyError: 1\n"}, "traceback"),
        ("error", {"code": 1, "stderr": "boom\n"}, "traceback"),
        ("error", {"code": 1, "exc": "ZeroDivisionError: integer modulo by zero"}, "traceback"),
        ("error", {"hang": True}, "hang"),
        ("error", {"code": 2, "stderr": "error: x\n", "lost": "userdir: deleted ['a']"}, "lost"),
        ("ok", {"code": 0, "stdout": "done\n"}, "correct"),
        ("ok", {"code": 0, "check": "results.json was not written"}, "silent"),
        ("ok", {"code": 2, "stderr": "error: no\n"}, "refused"),
        ("either", {"code": 2, "stderr": "error: no\n"}, "clear-error"),
    ],
)
def test_classify(expect, result, cls):
    assert hp.classify(_case(expect), result)[0] == cls


def test_misleading_message_is_unclear():
    case = _case(message="folder")
    assert hp.classify(case, {"code": 2, "stderr": "error: no such file x\n"})[0] == "unclear"
    assert hp.classify(case, {"code": 2, "stderr": "error: x is a folder\n"})[0] == "clear-error"


def test_snapshots_see_every_change(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".hidden").write_bytes(b"1")
    before = hp.snapshot(tmp_path)
    assert hp.diff_snapshots(before, hp.snapshot(tmp_path)) is None
    (tmp_path / "new").write_text("x")
    assert "added" in hp.diff_snapshots(before, hp.snapshot(tmp_path))
    assert hp.diff_snapshots(before, hp.snapshot(tmp_path), strict=False) is None  # a depthmux folder may grow
    (tmp_path / "a" / ".hidden").write_bytes(b"2")
    assert "changed" in hp.diff_snapshots(before, hp.snapshot(tmp_path), strict=False)


def test_the_table_is_large_unique_and_covers_every_command():
    cases = hc.all_cases()
    names = [c.name for c in cases]
    assert len(names) >= 400 and len(set(names)) == len(names)
    argv = {" ".join(c.argv[:2]) for c in cases if c.argv and len(c.argv) >= 2}
    for command in [
        "mux train",
        "mux eval",
        "mux bench",
        "mux run",
        "mux sweep",
        "lm train",
        "lm eval",
        "lm convert",
        "lm generate",
        "lm build-mor",
        "lm bench-decode",
        "ee train",
        "ee eval",
        "ee bench",
        "ee train-head",
        "ee sweep-layers",
    ]:
        assert command in argv, command
    assert sum(c.api is not None for c in cases) >= 50


def test_a_few_cases_end_to_end(tmp_path):
    report = tmp_path / "report.json"
    only = ["cli-unknown-command", "cli-version", "cli-help", "api-sp-max-new-tokens-0", "api-sp-ok"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "hostile_pass.py"), "--work", str(tmp_path / "work"), "--jobs", "1",
         "--json", str(report), *[a for name in only for a in ("--only", name)]],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    data = json.loads(report.read_text())
    assert data["invocations"] == len(only), proc.stdout + proc.stderr
    classes = {name: data["cases"][name]["cls"] for name in only}
    assert classes == {
        "cli-unknown-command": "clear-error",
        "cli-version": "correct",
        "cli-help": "correct",
        "api-sp-max-new-tokens-0": "clear-error",
        "api-sp-ok": "correct",
    }, proc.stdout
    assert proc.returncode == 0 and sum(data["totals"].values()) == len(only)


def test_every_command_of_the_cli_has_a_case():
    assert "lm generate" in hp.uncovered_commands([])  # the check sees a command no case invokes
    assert hp.uncovered_commands(hc.all_cases()) == []
