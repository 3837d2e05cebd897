"""``depthmux mux predict``: every format in and out, equal to ``load_classifier(dir).predict``, bad rows
named by line, atomic output, an existing --out refused."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from depthmux.cli import main
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import load_classifier
from depthmux.recipes.mux_predict import MuxPredictConfig, predict_file
from serve_fixtures import tiny_classifiers

TEXTS = [f"sentence number {i} is {'good' if i % 3 else 'bad'} and {'long ' * (i % 5)}" for i in range(53)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer):
    return tiny_classifiers(tmp_path_factory.mktemp("ckpt"), tokenizer)


def write(path, texts, fmt):
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    if fmt in ("csv", "tsv"):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, ["id", "text"], delimiter="," if fmt == "csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)  # row groups cut across chunks
    return path


def read(path, fmt):
    if fmt in ("csv", "tsv"):
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="," if fmt == "csv" else "\t"))
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
@pytest.mark.parametrize("kind", ["n2", "teacher"])
def test_predict_equals_load_classifier_predict(tmp_path, ckpts, fmt, kind):
    src = write(tmp_path / f"in.{fmt}", TEXTS, fmt)
    out = tmp_path / f"out.{fmt}"
    # chunks of 12 rows (batch 4): chunk and batch boundaries fall mid-file, the last group is incomplete
    s = predict_file(MuxPredictConfig(str(ckpts[kind]), str(src), str(out), batch_size=4, chunk_rows=10), False)
    assert s.rows == len(TEXTS)
    rows = read(out, fmt)
    assert [str(r["id"]) for r in rows] == [str(i) for i in range(len(TEXTS))]
    assert [r["text"] for r in rows] == TEXTS
    model = load_classifier(ckpts[kind])
    expected = [model.config.label_names[i] for i in model.predict(TEXTS, batch_size=4).tolist()]
    assert len(set(expected)) == 2  # both labels occur: the comparison can fail
    assert [r["predicted_label"] for r in rows] == expected
    probs = [(float(r["prob_neg"]), float(r["prob_pos"])) for r in rows]
    assert all(abs(a + b - 1) < 1e-4 for a, b in probs)
    assert [("pos" if b > a else "neg") for a, b in probs] == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("kind", ["n2", "teacher"])
def test_classify_is_predict_with_probabilities(ckpts, kind):
    """The one scoring step (``mux predict``, its Ray version and the server): labels as ``predict``, the
    softmax of one forward over the batch, the lock held around tokenising only."""
    model = load_classifier(ckpts[kind]).eval()
    texts = TEXTS[:7]  # N = 2: the last group is completed with a dummy
    held = []

    class Lock:
        def __enter__(self):
            held.append("in")

        def __exit__(self, *_):
            held.append("out")

    labels, probs = model.classify(texts, Lock())
    assert held == ["in", "out"]
    assert labels == [model.config.label_names[i] for i in model.predict(texts, batch_size=8).tolist()]
    with torch.no_grad():
        want = model(model.body.tokenize(texts)).logits.float().softmax(-1)
    assert torch.equal(torch.tensor(probs), want)


def test_grouping_changes_multiplexed_output(tmp_path, ckpts):
    """The equality above is not vacuous: the N = 2 model's probabilities depend on the group mates."""
    model = load_classifier(ckpts["n2"])
    enc = model.body.tokenize(TEXTS[:4])
    swapped = model.body.tokenize([TEXTS[0], TEXTS[2], TEXTS[1], TEXTS[3]])
    a, b = model(enc).logits, model(swapped).logits
    assert not a[0].allclose(b[0])


BAD = [
    ("csv", 'id,text\n0,fine\n1,""\n', "line 3 has an empty text"),
    ("csv", "id,text\n0,fine\n1,a,b\n", "line 3 has 3 field(s)"),
    ("csv", 'id,text\n0,"multi\nline"\n1,   \n', "line 4 has an empty text"),
    ("csv", "id,label\n0,x\n", "no column(s) ['text']"),
    ("csv", "id,text,predicted_label\n0,x,y\n", "already has column(s) ['predicted_label']"),
    ("tsv", "id\ttext\n0\tok\n1\n", "line 3 has 1 field(s)"),
    ("jsonl", '{"text": "a"}\n{"text": "b"\n', "line 2 is not valid JSON"),
    ("jsonl", '{"text": "a"}\n\n[1]\n', "line 3 is not a JSON object"),
    ("jsonl", '{"text": "a"}\n{"txt": "b"}\n', "line 2 has no field(s) ['text']"),
    ("jsonl", '{"text": "a"}\n{"text": null}\n', "line 2 has no text"),
    ("jsonl", '{"text": "a"}\n{"text": {"x": 1}}\n', "line 2: column 'text' holds a dict"),
    ("jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', "line 2 is not UTF-8"),
    ("csv", b"id,text\n0,ok\n1,caf\xe9\n", "is not UTF-8"),
]


@pytest.mark.parametrize(("fmt", "content", "message"), BAD)
def test_bad_rows_are_one_line_naming_the_line(tmp_path, ckpts, fmt, content, message):
    src = tmp_path / f"in.{fmt}"
    if isinstance(content, bytes):
        src.write_bytes(content)
    else:
        src.write_text(content)
    out = tmp_path / f"out.{fmt}"
    with pytest.raises(DepthmuxError, match=re.escape(message)):
        predict_file(MuxPredictConfig(str(ckpts["n2"]), str(src), str(out)), False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parquet_null_text_names_its_row(tmp_path, ckpts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), src)
    with pytest.raises(DepthmuxError, match="row 3 has no text"):
        predict_file(MuxPredictConfig(str(ckpts["n2"]), str(src), str(tmp_path / "o.parquet")), False)


def test_a_token_limit_overflow_names_its_line(tmp_path, ckpts):
    texts = ["short", "fine", "word " * 400, "x"]
    src = write(tmp_path / "in.csv", texts, "csv")
    with pytest.raises(DepthmuxError, match=r"line 4: text .* too long"):
        predict_file(MuxPredictConfig(str(ckpts["n2"]), str(src), str(tmp_path / "o.csv"), batch_size=2), False)
    assert not (tmp_path / "o.csv").exists()


def test_cli_refuses_existing_out_then_overwrites(tmp_path, ckpts, capsys):
    src = write(tmp_path / "in.jsonl", TEXTS[:9], "jsonl")
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    args = ["mux", "predict", str(ckpts["n2"]), "--input", str(src), "--out", str(out), "--text-column", "text"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "keep me\n"
    main([*args, "--overwrite", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 9 and sum(report["label_counts"].values()) == 9
    assert len(read(out, "jsonl")) == 9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/o.parquet"], "must have the input's format"),
        (["--out", "{tmp}/o.json"], "unknown data file extension '.json'"),
        (["--out", "{tmp}/missing/o.csv"], "--out folder does not exist"),
        (["--out", "{tmp}/in.csv"], "--out must differ from --input"),
        (["--out", "{tmp}/o.csv", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    ],
)
def test_cli_bad_options(tmp_path, ckpts, capsys, args, message):
    src = write(tmp_path / "in.csv", TEXTS[:3], "csv")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as e:
        main(["mux", "predict", str(ckpts["n2"]), "--input", str(src), *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


# --- hostile pass (hfix-a)
@pytest.mark.parametrize("kind", ["teacher", "n2"])
def test_predict_api_on_an_empty_list_and_on_none(ckpts, kind):
    model = load_classifier(ckpts[kind])
    out = model.predict([])
    assert out.shape == (0,) and out.dtype == torch.long
    with pytest.raises(DepthmuxError, match="predict takes a list of texts, got NoneType") as e:
        model.predict(None)
    assert "\n" not in str(e.value)
