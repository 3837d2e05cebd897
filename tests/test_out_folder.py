"""The output-folder rule (:mod:`depthmux.utils.run_folder`): a folder of the user's passed as ``--out`` to
any training command is refused with one line and left byte-identical; new, empty and run folders
(the marker, or an older version's layout) are accepted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from depthmux.cli import main
from depthmux.data.text import load_corpus, train_bpe_tokenizer
from depthmux.errors import DepthmuxError
from depthmux.utils import run_folder as rf  # attributes read in the tests: the CLI tests also run on older code
from depthmux.utils.run_folder import RunFolder

REFUSED = "holds files that are not a depthmux run; choose a new or empty --out"


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones included): a file's SHA-256, ``dir`` for a folder."""
    found = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        found[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def user_folder(path: Path) -> Path:
    """A folder of the user's: results, a model, nested and hidden files, temporary-looking names."""
    (path / "model").mkdir(parents=True)
    (path / "results.md").write_text("# my results\n| a | b |\n")
    (path / "results.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (path / "model" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (path / "model" / "config.txt").write_text("hidden = 32\n")
    (path / ".notes.tmp").write_text("draft\n")
    (path / ".hidden" / "deep").mkdir(parents=True)
    (path / ".hidden" / "deep" / ".x.old").write_text("old\n")
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "readme.txt").write_text("mine\n")
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


@pytest.fixture
def data(tmp_path, tiny_llama_factory):
    """Tiny inputs for the three trainers: CSVs, a corpus, a LLaMA with its tokenizer."""
    root = tmp_path / "data"
    root.mkdir()
    rows = "".join(f"a fine sentence number {i},{i % 2}\n" for i in range(24))
    for name in ("train.csv", "dev.csv"):
        (root / name).write_text("text,label\n" + rows)
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"paragraph {i}: " + " ".join(f"w{(i + j) % 13}" for j in range(30)) for i in range(30))
    )
    tok = train_bpe_tokenizer(load_corpus(str(corpus)), 300)
    llama = root / "llama"
    tiny_llama_factory(vocab_size=len(tok), num_hidden_layers=4, eos_token_id=tok.eos_token_id).save_pretrained(llama)
    tok.save_pretrained(llama)
    return root


def trainer_args(kind: str, out: Path, data: Path) -> list[str]:
    if kind == "mux":
        return ["mux", "train", "--out", str(out), "--train", str(data / "train.csv"), "--dev", str(data / "dev.csv"),
                "--no-bench", "--shuffles", "1", "--epochs", "1", "--min-steps", "0"]  # fmt: skip
    lm_loop = ["--corpus", str(data / "corpus.txt"), "--steps", "2", "--batch-size", "2", "--block-size", "16",
               "--no-progress"]  # fmt: skip
    if kind == "lm":
        return ["lm", "train", "--out", str(out), "--tokenizer", "bpe:300", "--hidden", "32", "--layers", "2",
                "--heads", "4", *lm_loop]  # fmt: skip
    return ["ee", "train", "--out", str(out), "--from", str(data / "llama"), "--exit-layer", "2", "--warmup", "1",
            *lm_loop]  # fmt: skip


@pytest.mark.parametrize("kind", ["mux", "lm", "ee"])
def test_a_user_folder_given_as_out_is_refused_and_left_byte_identical(kind, tmp_path, data, capsys):
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    code, err = run_cli(trainer_args(kind, folder, data), capsys)
    assert snapshot(folder) == before, f"{kind} train changed the user's folder"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err[-800:]
    assert lines[0] == f"error: {folder} {REFUSED}"


@pytest.mark.parametrize("kind", ["mux", "lm", "ee"])
def test_an_empty_out_is_refused(kind, tmp_path, data, capsys, monkeypatch):
    monkeypatch.chdir(user_folder(tmp_path / "cwd"))  # '' would be the current directory
    before = snapshot(tmp_path / "cwd")
    args = trainer_args(kind, Path("x"), data)
    args[args.index("--out") + 1] = ""
    code, err = run_cli(args, capsys)
    assert code == 2 and "an empty --out names the current directory" in err and len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path / "cwd") == before


def test_out_path_refuses_blank_values():
    for bad in ("", "   "):
        with pytest.raises(DepthmuxError, match="empty --out"):
            rf.out_path(bad)
    assert rf.out_path("runs/x") == Path("runs/x")


def _legacy(root: Path, config: str, obj: dict) -> Path:
    root.mkdir(parents=True)
    (root / config).write_text(json.dumps(obj))
    return root


def test_which_folders_are_accepted(tmp_path):
    rf.check_out_folder(tmp_path / "new")  # new
    (tmp_path / "empty").mkdir()
    rf.check_out_folder(tmp_path / "empty")
    (tmp_path / "old-lock").mkdir()
    (tmp_path / "old-lock" / ".lock").write_text("")  # what an older run that stopped at once left
    rf.check_out_folder(tmp_path / "old-lock")
    marked = user_folder(tmp_path / "marked")
    (marked / rf.MARKER).write_text("x")
    rf.check_out_folder(marked)  # a run's folder may hold anything (results, a model, temporary files)
    cell = marked / "tweets-train500" / "n2-l1-reversible"  # a sweep's cell, stopped before its log
    cell.mkdir(parents=True)
    (cell / "train_config.json").write_text("{}")
    rf.check_out_folder(cell)
    # older versions (no marker): our config AND the trace of a started run
    logged = _legacy(tmp_path / "legacy-log", "train_config.json", {"train": {"lr": 1e-3}})
    (logged / "log.jsonl").write_text('{"step": 1}\n')
    rf.check_out_folder(logged)
    ckpt = _legacy(tmp_path / "legacy-ckpt", "train_config.json", {"train": {}, "model": {}})
    (ckpt / "checkpoints" / "step-000004").mkdir(parents=True)
    (ckpt / "checkpoints" / ".step-000008.tmp").mkdir()
    rf.check_out_folder(ckpt)
    exp = _legacy(tmp_path / "legacy-exp", "experiment.json", dict.fromkeys(("task", "ns", "prefill_layers",
                                                                             "mixers", "train")))  # fmt: skip
    (exp / "teacher").mkdir()
    rf.check_out_folder(exp)
    sweep = _legacy(tmp_path / "legacy-sweep", "sweep.json", dict.fromkeys(("experiment", "lambdas", "seeds")))
    (sweep / "tweets-train500" / "teacher").mkdir(parents=True)
    rf.check_out_folder(sweep)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: (p / "notes.txt").write_text("x"),
        lambda p: (p / ".lock").write_text("my lock file"),  # not empty: not ours
        lambda p: (p / "train_config.json").write_text('{"train": {}}'),  # a config alone is not enough
        lambda p: ((p / "train_config.json").write_text('{"lr": 1}'), (p / "log.jsonl").write_text("")),
        lambda p: ((p / "train_config.json").write_text("{not json"), (p / "log.jsonl").write_text("")),
        lambda p: ((p / "experiment.json").write_text('{"train": {}}'), (p / "teacher").mkdir()),
        lambda p: (
            (p / "train_config.json").write_text('{"train": {}}'),
            (p / "checkpoints" / "final").mkdir(parents=True),
        ),
    ],
    ids=[
        "a-file",
        "a-non-empty-lock",
        "config-alone",
        "config-without-our-keys",
        "config-not-json",
        "experiment-without-our-keys",
        "checkpoints-not-ours",
    ],
)
def test_which_folders_are_refused(tmp_path, make):
    root = tmp_path / "f"
    root.mkdir()
    make(root)
    before = snapshot(root)
    with pytest.raises(DepthmuxError, match="holds files that are not a depthmux run"):
        rf.check_out_folder(root)
    with pytest.raises(DepthmuxError, match="holds files that are not a depthmux run"):
        RunFolder(root).check_writable()
    with pytest.raises(DepthmuxError, match="holds files that are not a depthmux run"), RunFolder(root).lock():
        pass
    assert snapshot(root) == before


def test_out_is_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DepthmuxError, match="is not a folder"):
        RunFolder(tmp_path / "f.txt").check_writable()


def test_a_run_writes_the_marker_and_its_folder_stays_accepted(tmp_path):
    run = RunFolder(tmp_path / "run")
    with run.lock():
        assert (run.root / rf.MARKER).is_file()
        (run.root / "results.md").write_text("ours\n")
    rf.check_out_folder(run.root)
    with run.lock():  # a second run (a resume) opens it again
        pass
    # an older version's run gets the marker on its next run
    old = _legacy(tmp_path / "old", "train_config.json", {"train": {}})
    (old / "log.jsonl").write_text("")
    with RunFolder(old).lock():
        pass
    assert (old / rf.MARKER).is_file()
