"""A user's own labelled files (CSV, TSV, JSON lines, Parquet) read through `datasets`: texts, pairs,
label names from the data, the validation split, and one-line errors naming the file."""

from __future__ import annotations

import json

import pytest

from depthmux.data import UserDataSpec, load_user_file, load_user_splits
from depthmux.data.user_files import label_order, read_labelled_file
from depthmux.errors import DepthmuxError


def _csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_formats_give_the_same_rows(tmp_path):
    rows = [("a good film", "pos"), ("dull, long", "neg"), ("fine", "pos")]
    _csv(tmp_path / "d.csv", [f'"{t}",{y}' for t, y in rows])
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    import pandas as pd

    pd.DataFrame({"text": [t for t, _ in rows], "label": [y for _, y in rows]}).to_parquet(tmp_path / "d.parquet")
    expected = ([t for t, _ in rows], [y for _, y in rows])
    for ext in ("csv", "tsv", "jsonl", "parquet"):
        assert read_labelled_file(tmp_path / f"d.{ext}", ["text"], "label") == expected, ext


def test_pairs_and_numeric_labels(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"q": f"q{i}", "s": f"s{i}", "y": i % 3}) + "\n" for i in range(9)))
    texts, labels = read_labelled_file(path, ["q", "s"], "y")
    assert texts[4] == ("q4", "s4") and labels[:4] == ["0", "1", "2", "0"]
    assert label_order({"10", "2", "1"}) == ["1", "2", "10"] and label_order({"b", "a"}) == ["a", "b"]


def test_splits_name_labels_and_hold_out_validation(tmp_path):
    train = _csv(tmp_path / "reviews.csv", [f"text {i},{['bad', 'ok', 'good'][i % 3]}" for i in range(40)])
    dev = _csv(tmp_path / "dev.csv", ["nice,good", "meh,ok"])
    splits = load_user_splits(UserDataSpec(str(train), str(dev), val_fraction=0.25))
    assert {k: len(v) for k, v in splits.items()} == {"train": 30, "validation": 10, "dev": 2}
    assert splits["dev"].label_names == ["bad", "good", "ok"] and splits["dev"].labels == [1, 2]
    assert splits["dev"].name == "reviews" and splits["train"].num_labels == 3
    assert not set(splits["train"].texts) & set(splits["validation"].texts)

    val = _csv(tmp_path / "val.csv", ["x,bad", "y,good"])
    with_file = load_user_splits(UserDataSpec(str(train), str(dev), val_file=str(val)))
    assert len(with_file["train"]) == 40 and with_file["validation"].texts == ["x", "y"]


def test_load_user_file_maps_to_the_models_labels(tmp_path):
    dev = _csv(tmp_path / "dev.csv", ["nice,good", "meh,ok"])
    data = load_user_file(dev, ["text"], "label", ["bad", "good", "ok"])
    assert data.labels == [1, 2] and data.name == "dev"
    with pytest.raises(DepthmuxError, match=r"label\(s\) \['ok'\] are not among the model's labels"):
        load_user_file(dev, ["text"], "label", ["bad", "good"])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_column", r"train.csv: no column\(s\) \['label'\] \(the file has \['text', 'target'\]\)"),
        ("empty_file", r"train.csv: file is empty"),
        ("header_only", r"train.csv: no rows after the header"),
        ("label_only_in_dev", r"dev.csv: label\(s\) \['maybe'\] never appear in the train file"),
        ("unknown_extension", r"train.xlsx: unknown data file extension '.xlsx'"),
        ("three_text_columns", r"--text-column takes one column \(single texts\) or two \(pairs\), got 3"),
        ("blank_text", r"train.csv: row 2 has an empty text \(column 'text'\)"),
        ("missing_label", r"train.csv: row 1 has no label \(column 'label'\)"),
        ("one_label", r"every row has label 'a'; a classifier needs at least two labels"),
        ("missing_file", r"data file not found: .*nope.csv"),
        ("bad_json", r"train.jsonl: cannot read it as JSON"),
    ],
)
def test_bad_files_are_one_line(tmp_path, case, message):
    good = [f"t{i},{'ab'[i % 2]}" for i in range(6)]
    dev = _csv(tmp_path / "dev.csv", good)
    train = tmp_path / "train.csv"
    columns = ["text"]
    if case == "missing_column":
        _csv(train, good, header="text,target")
    elif case == "empty_file":
        train.write_text("")
    elif case == "header_only":
        train.write_text("text,label\n")
    elif case == "label_only_in_dev":
        _csv(train, good)
        _csv(dev, good + ["t,maybe"])
    elif case == "unknown_extension":
        train = tmp_path / "train.xlsx"
        train.write_text("x")
    elif case == "three_text_columns":
        _csv(train, good)
        columns = ["a", "b", "c"]
    elif case == "blank_text":
        _csv(train, ["t0,a", "\u200b,b"] + good)
    elif case == "missing_label":
        _csv(train, ["t0,"] + good)
    elif case == "one_label":
        _csv(train, ["t0,a", "t1,a"])
    elif case == "missing_file":
        train = tmp_path / "nope.csv"
    elif case == "bad_json":
        train = tmp_path / "train.jsonl"
        train.write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(DepthmuxError, match=message) as err:
        load_user_splits(UserDataSpec(str(train), str(dev), columns))
    assert "\n" not in str(err.value)
