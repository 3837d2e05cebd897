"""Classification data that used to crash (issue 7 item 8): bytes that are not UTF-8, fields over
the csv module's 128 KB limit, texts of only invisible or non-breaking spaces."""

from __future__ import annotations

import pytest

from depthmux.data import load_task, task_name
from depthmux.errors import DepthmuxError


def _write_bytes(tmp_path, folder, split, data: bytes):
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / folder / f"{split}.tsv").write_bytes(data)
    return tmp_path


def test_latin1_byte_names_file_and_line(tmp_path):
    root = _write_bytes(tmp_path, "SST-2", "dev", "sentence\tlabel\ngood\t1\ncaf\xe9 au lait\t1\n".encode("latin-1"))
    with pytest.raises(DepthmuxError, match=r"SST-2/dev.tsv:3: the file is not UTF-8 \(byte 0xe9") as err:
        load_task("sst2", "dev", root)
    assert "\n" not in str(err.value)


def test_field_over_128_kb_is_one_line_naming_the_line(tmp_path):
    """Used to be a `_csv.Error: field larger than field limit` traceback."""
    root = _write_bytes(tmp_path, "SST-2", "dev", b"sentence\tlabel\nshort\t0\n" + b"x" * 200_000 + b"\t1\n")
    with pytest.raises(
        DepthmuxError,
        match=r"dev.tsv:3: malformed row: a text of 200000 characters, over the "
        r"131072-character limit",
    ):
        load_task("sst2", "dev", root)


def test_long_field_under_the_limit_is_read(tmp_path):
    long_text = "word " * 20_000  # 100 KB, more than csv's field limit allowed with some slack
    root = _write_bytes(tmp_path, "SST-2", "dev", f"sentence\tlabel\n{long_text}\t1\nshort\t0\n".encode())
    data = load_task("sst2", "dev", root)
    assert data.texts == [long_text.strip(), "short"] and data.labels == [1, 0]


@pytest.mark.parametrize("blank", ["\u200b", "\u00a0\u00a0", " \u200b\u2060 ", "\ufeff", "\u3000"])
def test_invisible_text_counts_as_empty(tmp_path, blank):
    root = _write_bytes(tmp_path, "SST-2", "dev", f"sentence\tlabel\nfine\t1\n{blank}\t1\n".encode())
    with pytest.raises(DepthmuxError, match=r"dev.tsv:3: malformed row: empty text"):
        load_task("sst2", "dev", root)


@pytest.mark.parametrize("blank", ["\u200b", "\u00a0", "\u200c\u200d"])
def test_backbone_refuses_invisible_text(tiny_backbone, blank):
    with pytest.raises(DepthmuxError, match="text 1 is empty"):
        tiny_backbone.tokenize(["fine", blank])


def test_crlf_line_ends_and_literal_quotes(tmp_path):
    root = _write_bytes(tmp_path, "SST-2", "dev", b'sentence\tlabel\r\n"quoted start\t1\r\nplain\t0\r\n')
    data = load_task("sst2", "dev", root)
    assert data.texts == ['"quoted start', "plain"] and data.labels == [1, 0]


def test_task_names_are_normalised_and_checked():
    assert task_name("SST-2") == "sst2" and task_name("tweets") == "tweets"
    with pytest.raises(DepthmuxError, match="unknown task 'cola'"):
        task_name("cola")


def test_corpus_of_only_invisible_text_is_empty(tmp_path):
    from depthmux.data.text import load_corpus

    (tmp_path / "zw.txt").write_text("\u200b\u200b\n\n\u00a0\u2060\n")
    with pytest.raises(DepthmuxError, match="is empty: no non-blank documents"):
        load_corpus(tmp_path / "zw.txt")


def test_glue_default_folder_comes_from_the_environment(tmp_path, monkeypatch):
    from depthmux.data.classification import default_glue_dir, load_task

    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n", encoding="utf-8")
    monkeypatch.setenv("DEPTHMUX_GLUE_DIR", str(tmp_path))
    assert default_glue_dir() == tmp_path
    ds = load_task("sst2", "dev")  # no data_dir: the environment's folder, no hub
    assert list(ds.labels) == [1, 0]


def test_glue_without_any_folder_is_one_line_and_never_the_hub(tmp_path, monkeypatch):
    from depthmux.data.classification import default_glue_dir

    monkeypatch.setenv("DEPTHMUX_GLUE_DIR", str(tmp_path / "missing"))
    with pytest.raises(DepthmuxError, match="not a folder"):
        default_glue_dir()
    monkeypatch.delenv("DEPTHMUX_GLUE_DIR")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("depthmux.data.classification.__file__", str(tmp_path / "a" / "b" / "c" / "x.py"))
    with pytest.raises(DepthmuxError, match=r"no GLUE data found.*nothing is downloaded"):
        default_glue_dir()
