"""Bad users' data and data options through the CLI: one ``error:`` line, exit status 2, refused before
any forward pass (the tripwire of tests/test_bad_inputs.py: calling a torch module fails the case), and
nothing left in --out that would block a corrected rerun."""

from __future__ import annotations

import pytest
import torch

from depthmux.cli import main


class ReachedComputation(BaseException):
    """Raised when a case reaches a forward pass."""


GOOD = "".join(f"a fine sentence number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
DEV = "".join(f"another sentence {i},{'pos' if i % 2 else 'neg'}\n" for i in range(8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("userdata")
    f = {}

    def write(name, text):
        f[name] = root / name
        f[name].write_text(text)

    write("good.csv", "text,label\n" + GOOD)
    write("dev.csv", "text,label\n" + DEV)
    write("other_columns.csv", "sentence,target\n" + GOOD)
    write("empty.csv", "")
    write("header_only.csv", "text,label\n")
    write("dev_new_label.csv", "text,label\n" + DEV + "a sentence,neutral\n")
    write("data.xlsx", "not a spreadsheet")
    write("blank_text.csv", "text,label\n" + GOOD + " ,pos\n")
    write("no_label.csv", "text,label\n" + GOOD + "a sentence,\n")
    write("broken.jsonl", '{"text": "a", "label": 1}\n{"text": \n')
    return f


TRAIN = ["mux", "train", "--no-bench", "--shuffles", "1", "--epochs", "1"]
DATA = ["--train", "{good.csv}", "--dev", "{dev.csv}"]

CASES = [
    ("missing-text-column", [*TRAIN, *DATA, "--text-column", "sentence"], "no column(s) ['sentence']"),
    ("missing-label-column", [*TRAIN, *DATA, "--label-column", "target"], "no column(s) ['target']"),
    ("train-file-other-columns", [*TRAIN, "--train", "{other_columns.csv}", "--dev", "{dev.csv}"],
     "other_columns.csv: no column(s) ['text', 'label'] (the file has ['sentence', 'target'])"),
    ("empty-train-file", [*TRAIN, "--train", "{empty.csv}", "--dev", "{dev.csv}"], "empty.csv: file is empty"),
    ("empty-dev-file", [*TRAIN, "--train", "{good.csv}", "--dev", "{empty.csv}"], "empty.csv: file is empty"),
    ("header-only", [*TRAIN, "--train", "{header_only.csv}", "--dev", "{dev.csv}"], "no rows after the header"),
    ("label-only-in-dev", [*TRAIN, "--train", "{good.csv}", "--dev", "{dev_new_label.csv}"],
     "label(s) ['neutral'] never appear in the train file"),
    ("label-only-in-val", [*TRAIN, *DATA, "--val", "{dev_new_label.csv}"], "label(s) ['neutral'] never appear"),
    ("unknown-extension", [*TRAIN, "--train", "{data.xlsx}", "--dev", "{dev.csv}"],
     "data.xlsx: unknown data file extension '.xlsx'"),
    ("unknown-dev-extension", [*TRAIN, "--train", "{good.csv}", "--dev", "{data.xlsx}"],
     "unknown data file extension"),
    ("three-text-columns", [*TRAIN, *DATA, "--text-column", "a,b,c"],
     "--text-column takes one column (single texts) or two (pairs), got 3"),
    ("three-text-columns-repeated", [*TRAIN, *DATA, "--text-column", "a", "--text-column", "b", "--text-column",
                                     "c"], "got 3"),
    ("text-column-twice-the-same", [*TRAIN, *DATA, "--text-column", "text,text"], "--text-column repeats"),
    ("label-column-is-text-column", [*TRAIN, *DATA, "--label-column", "text"], "is also a --text-column"),
    ("blank-text", [*TRAIN, "--train", "{blank_text.csv}", "--dev", "{dev.csv}"], "row 41 has an empty text"),
    ("missing-label", [*TRAIN, "--train", "{no_label.csv}", "--dev", "{dev.csv}"], "row 41 has no label"),
    ("broken-json-lines", [*TRAIN, "--train", "{broken.jsonl}", "--dev", "{dev.csv}"], "cannot read it as JSON"),
    ("missing-train-file", [*TRAIN, "--train", "{missing}", "--dev", "{dev.csv}"], "data file not found"),
    ("train-without-dev", [*TRAIN, "--train", "{good.csv}"], "give both --train FILE and --dev FILE"),
    ("dev-without-train", [*TRAIN, "--dev", "{dev.csv}"], "give both --train FILE and --dev FILE"),
    ("val-without-train", [*TRAIN, "--val", "{dev.csv}"], "give both --train FILE and --dev FILE"),
    ("text-column-with-a-task", [*TRAIN, "--text-column", "text"], "the built-in tasks know their own"),
    ("val-split-one", [*TRAIN, *DATA, "--val-split", "1"], "--val-split must be a finite number in (0.0, 1.0)"),
    ("val-split-zero", [*TRAIN, "--task", "sst2", "--val-split", "0"], "--val-split must be a finite number"),
    ("val-split-nan", [*TRAIN, *DATA, "--val-split", "nan"], "--val-split must be a finite number"),
    ("val-split-tweets", [*TRAIN, "--val-split", "0.2", "--out", "{out}"], "--val-split does not apply to the tweets"),
    ("unknown-teacher", [*TRAIN, *DATA, "--teacher", "distill"], "unknown teacher 'distill'"),
    ("finetune-epochs-zero", [*TRAIN, *DATA, "--teacher", "finetune", "--finetune-epochs", "0"],
     "--finetune-epochs must be an integer >= 1"),
    ("finetune-lr-negative", [*TRAIN, *DATA, "--teacher", "finetune", "--finetune-lr", "-1"], "--finetune-lr"),
    ("patience-negative", [*TRAIN, *DATA, "--patience", "-1"], "--patience must be an integer >= 0"),
    ("min-steps-negative", [*TRAIN, *DATA, "--min-steps", "-3"], "--min-steps must be an integer >= 0"),
    ("eval-dev-and-task", ["mux", "eval", "{missing}", "--dev", "{dev.csv}", "--task", "sst2"],
     "give --task or --dev FILE, not both"),
    ("eval-text-column-without-dev", ["mux", "eval", "{missing}", "--text-column", "text"],
     "--text-column and --label-column name the columns of a --dev FILE"),
    ("eval-dev-unknown-extension", ["mux", "eval", "{missing}", "--dev", "{data.xlsx}"],
     "unknown data file extension"),
    ("sweep-unknown-extension", ["mux", "sweep", "--no-bench", "--train", "{data.xlsx}", "--dev", "{dev.csv}"],
     "unknown data file extension"),
    ("sweep-three-text-columns", ["mux", "sweep", "--no-bench", *DATA, "--text-column", "a,b,c"], "got 3"),
    ("sweep-label-only-in-dev", ["mux", "sweep", "--no-bench", "--train", "{good.csv}", "--dev",
                                 "{dev_new_label.csv}", "--max-train", "0"], "never appear in the train file"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_user_data_is_one_line(name, argv, message, files, tmp_path, monkeypatch, capsys):
    paths = {k: str(v) for k, v in files.items()} | {"missing": str(tmp_path / "nope.csv")}
    out = tmp_path / "out"
    paths["out"] = str(out)
    args = [paths[a[1:-1]] if a.startswith("{") else a for a in argv]
    if "--out" not in args and args[1] in ("train", "sweep"):
        args += ["--out", str(out)]

    def reached(self, *a, **k):
        raise ReachedComputation(f"{name}: accepted, reached a forward pass")

    monkeypatch.setattr(torch.nn.Module, "__call__", reached)
    with pytest.raises(SystemExit) as code:
        main(args)
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2, err
    assert err.count("\n") == 0 and err.startswith("error: "), err
    assert message in err, err
    assert not (out / "experiment.json").exists()  # a corrected rerun into --out is not blocked
