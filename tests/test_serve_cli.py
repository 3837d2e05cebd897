"""``depthmux serve`` and ``depthmux serve bench`` refuse bad options with one line and exit 2, before
loading any model."""

from __future__ import annotations

import socket

import pytest

from depthmux.cli import main


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


CASES = [
    ([], "nothing to serve"),
    (["--classifier", "justaname"], "--classifier takes NAME=DIR"),
    (["--classifier", "a=/no/such/folder"], "no such folder"),
    (["--classifier", "a={tmp}", "--classifier", "a={tmp}"], "given twice"),
    (["--classifier", "a={tmp}", "--host", "0.0.0.0"], "not loopback"),
    (["--classifier", "a={tmp}", "--port", "70000"], "--port must be <= 65535"),
    (["--classifier", "a={tmp}", "--port", "0"], "--port must be an integer >= 1"),
    (["--classifier", "a={tmp}", "--max-queued", "0"], "--max-queued"),
    (["--classifier", "a={tmp}", "--max-batch", "-1"], "--max-batch"),
    (["--classifier", "a={tmp}", "--max-wait-ms", "nan"], "--max-wait-ms"),
    (["--classifier", "a={tmp}", "--kv-budget-mb", "0"], "--kv-budget-mb"),
    (["--classifier", "a={tmp}", "--device", "tpu9"], "--device"),
    (["--classifier", "a={tmp}", "--port", "{taken}"], "cannot listen on 127.0.0.1"),
    (["bench", "--url", "http://10.0.0.1:8000", "--model", "m"], "loopback"),
    (["bench", "--url", "ftp://127.0.0.1", "--model", "m"], "http://HOST:PORT"),
    (["bench", "--url", "http://127.0.0.1:1", "--model", "m", "--endpoint", "embed"], "--endpoint must be one of"),
    (["bench", "--url", "http://127.0.0.1:1", "--model", "m", "--rate", "-2"], "--rate"),
    (["bench", "--url", "http://127.0.0.1:1", "--model", "m", "--inputs-file", "/no/file"], "not found"),
]


@pytest.mark.parametrize(("args", "message"), CASES)
def test_bad_serve_options_are_one_line(tmp_path, taken_port, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{taken}", str(taken_port)) for a in args]
    with pytest.raises(SystemExit) as e:
        main(["serve", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert message in err


def test_bench_against_nothing_counts_connection_errors(capsys):
    main(["serve", "bench", "--url", f"http://127.0.0.1:{_free()}", "--model", "m", "--num-requests", "3"])
    out = capsys.readouterr().out
    import json

    report = json.loads(out)
    assert report["completed"] == 0 and sum(report["errors_by_status"].values()) == 3
    assert all(k.startswith("connection:") for k in report["errors_by_status"])


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
