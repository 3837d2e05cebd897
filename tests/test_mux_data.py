"""Classification data: GLUE TSVs read as the GLUE README says, clear errors, embedded tweets."""

from __future__ import annotations

import pytest

from depthmux.data import load_task
from depthmux.errors import DepthmuxError


def _write(tmp_path, task_folder, split, text, encoding="utf-8"):
    folder = tmp_path / task_folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.tsv").write_text(text, encoding=encoding)
    return tmp_path


def test_quotes_are_literal_and_bom_is_stripped(tmp_path):
    rows = [
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        '1\t1\t2\t"He said\tShe said "yes',
        "0\t3\t4\tA b\tC d",
    ]
    root = _write(tmp_path, "MRPC", "dev", "\n".join(rows) + "\n")
    data = load_task("mrpc", "dev", root)
    assert data.texts[0] == ('"He said', 'She said "yes')
    assert data.labels == [1, 0]


def test_malformed_row_names_file_and_line(tmp_path):
    root = _write(tmp_path, "SST-2", "dev", "sentence\tlabel\ngood movie \t1\nbroken row without tab\n")
    with pytest.raises(
        DepthmuxError, match=r"SST-2/dev.tsv:3: malformed row: expected 2 tab-separated fields, found 1"
    ):
        load_task("sst2", "dev", root)


def test_bad_label_names_file_and_line(tmp_path):
    root = _write(tmp_path, "RTE", "dev", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DepthmuxError, match=r"RTE/dev.tsv:2: malformed row: label 'maybe'"):
        load_task("rte", "dev", root)


def test_empty_text_in_a_row_is_an_error(tmp_path):
    root = _write(tmp_path, "SST-2", "dev", "sentence\tlabel\n  \t1\n")
    with pytest.raises(DepthmuxError, match=r"dev.tsv:2: malformed row: empty text"):
        load_task("sst2", "dev", root)


def test_missing_directory_and_unknown_task(tmp_path):
    with pytest.raises(DepthmuxError, match="data directory not found"):
        load_task("sst2", "dev", tmp_path / "nope")
    with pytest.raises(DepthmuxError, match="unknown task 'cola'"):
        load_task("cola", "dev", tmp_path)


def test_without_data_dir_the_default_folder_is_read(glue, monkeypatch):
    monkeypatch.setenv("DEPTHMUX_GLUE_DIR", str(glue))
    assert load_task("sst2", "dev", None).texts == load_task("sst2", "dev", glue).texts
    monkeypatch.setenv("DEPTHMUX_GLUE_DIR", str(glue / "nope"))
    with pytest.raises(DepthmuxError, match=r"DEPTHMUX_GLUE_DIR.*not a folder"):
        load_task("sst2", "dev", None)


def test_real_glue_counts_and_disjoint_validation(glue):
    dev = load_task("sst2", "dev", glue)
    assert len(dev) == 872 and sum(dev.labels) == 444
    train, val = load_task("sst2", "train", glue), load_task("sst2", "validation", glue)
    assert len(train) + len(val) == 67349
    assert len(load_task("mrpc", "dev", glue)) == 408
    rte = load_task("rte", "train", glue)
    assert any(
        isinstance(t, tuple) and t[0].startswith('"That film')
        for t in rte.texts + load_task("rte", "validation", glue).texts
    )
    qnli_dev, qnli_train = load_task("qnli", "dev", glue), load_task("qnli", "train", glue)
    assert len(qnli_dev) == round(0.2 * 5463) and "80%" in qnli_dev.notes[0]
    assert not set(qnli_dev.texts) & set(qnli_train.texts)


def test_embedded_tweets_need_no_data_dir():
    train, dev = load_task("tweets", "train"), load_task("tweets", "dev")
    assert len(train) > 10_000 and len(dev) > 1000
    assert set(train.labels) == {0, 1} and dev.label_names == ["negative", "positive"]
    assert not set(train.texts) & set(dev.texts) or len(set(train.texts) & set(dev.texts)) < 0.05 * len(dev)
