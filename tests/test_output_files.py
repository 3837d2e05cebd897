"""A file output (``--plot``, ``--out`` of the benchmarks) never replaces a file that is already there."""

from __future__ import annotations

import pytest

from depthmux.cli import main
from depthmux.errors import DepthmuxError
from depthmux.utils.checks import check_output_file


def test_an_existing_file_is_refused_and_left_as_it_was(tmp_path):
    mine = tmp_path / "results.json"
    mine.write_bytes(b"a user's file")
    with pytest.raises(DepthmuxError, match="already exists") as e:
        check_output_file("--out", mine)
    assert "\n" not in str(e.value) and mine.read_bytes() == b"a user's file"
    check_output_file("--out", tmp_path / "new.json")  # a new name is fine
    assert not (tmp_path / "new.json").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["lm", "bench-decode", "--quick", "--out", "{f}"],
        ["serve", "bench", "--url", "http://127.0.0.1:9", "--model", "m", "--num-requests", "1", "--out", "{f}"],
    ],
    ids=["bench-decode", "serve-bench"],
)
def test_cli_outputs_refuse_an_existing_file(tmp_path, capsys, argv):
    mine = tmp_path / "mine.json"
    mine.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as e:
        main([a.replace("{f}", str(mine)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "already exists" in err and "\n" not in err
    assert mine.read_bytes() == b"keep me"
