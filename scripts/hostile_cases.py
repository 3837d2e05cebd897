"""The cases of the hostile pass (``scripts/hostile_pass.py``) and the files they use.

Length: the case table is one list so that every case of issues 20 and 21 is found in one place; the
fixtures it names (tiny models, broken model folders, data files, trained runs) sit beside it.

A case is a CLI argument list (or a Python API function) with placeholders: ``{out}`` a new path in
the case's folder, ``{tmp}`` the case's folder, ``{userdir}`` a user's folder with nested and hidden
files (protected: it must stay byte-identical), ``{userfile}`` a user's file (protected), ``{hidden}``
a folder holding only hidden files (protected), ``{copy:NAME}`` a private copy of fixture NAME
(protected unless the case names it in ``mutable``), and ``{NAME}`` a shared fixture (protected).
Fixtures are built once per work folder, only those the selected cases name.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PLACEHOLDER = re.compile(r"\{([a-z0-9_]+(?::[a-z0-9_]+)?)\}")
PER_CASE = {"out", "tmp", "userdir", "userfile", "hidden", "emptyout"}
UNWRITABLE = "/sys/kernel/hostile-pass-run" if os.geteuid() == 0 else "/proc/hostile-pass-run"


@dataclass
class Case:
    """One invocation and what it must do (module docstring)."""

    name: str
    argv: list[str] | None = None
    expect: str = "error"  # error | ok | either | interrupt | help
    check: Callable | None = None
    api: Callable | None = None
    mode: str = "inproc"  # inproc | subprocess | console | kill | interrupt
    timeout: float = 120.0
    cost: float = 1.0
    env: dict = field(default_factory=dict)
    mutable: tuple[str, ...] = ()
    resume: list[str] | None = None  # kill: the command run after the kill
    wait_for: str | None = None  # kill / interrupt: a glob under {out} whose appearance triggers the signal
    rlimit_as: int | None = None
    note: str = ""
    message: str | None = None  # an expected error's line must match this regex (else: unclear)
    upfront: bool = False  # an expected error must come before any output on stdout (before the work)
    uses: tuple[str, ...] = ()  # fixtures an API case needs beyond those in its name
    requires: str | None = None  # a command that not every depthmux has (skipped where it is missing)

    def describe(self) -> str:
        if self.api is not None:
            return f"python: {self.note or self.api.__name__}"
        cmd = "depthmux " + " ".join(_quote(a) for a in self.argv)
        if self.resume:
            cmd += " ; kill -9 ; depthmux " + " ".join(_quote(a) for a in self.resume)
        return cmd[:400]

    def placeholders(self) -> set[str]:
        names: set[str] = set(self.uses)
        for a in [*(self.argv or []), *(self.resume or []), self.note, getattr(self.api, "__name__", "")]:
            names.update(PLACEHOLDER.findall(a))
        return names


def _quote(a: str) -> str:
    if a == "" or re.search(r"[\s'\"\\]", a):
        return repr(a)
    return a if len(a) < 80 else a[:40] + f"...({len(a)} chars)"


# ---------------------------------------------------------------------------------------------
# per-case context
# ---------------------------------------------------------------------------------------------

USER_FILES = {
    "results.md": b"# my results\n",
    "results.png": b"\x89PNG\r\n\x1a\nnot really a png",
    "model/weights.bin": bytes(range(256)),
    "model/config.txt": b"hidden=32\n",
    ".tmp-editor-swap": b"unsaved work\n",
    "nested/deep/notes.txt": b"precious\n",
    ".git/HEAD": b"ref: refs/heads/main\n",
}


class Context:
    """Paths of one case and, after it ran, its output (``stdout``, ``stderr``, ``value`` for the API)."""

    def __init__(self, case: Case, work: Path):
        self.case, self.work = case, Path(work)
        self.dir = self.work / "cases" / case.name
        self.fixtures = self.work / "fixtures"
        self.stdout = self.stderr = ""
        self.value = None

    def path(self, name: str) -> str:
        if name == "tmp":
            return str(self.dir)
        if name == "emptyout":
            return str(self.dir / "empty-out")
        if name in PER_CASE:
            return str(self.dir / name)
        if name.startswith("copy:"):
            return str(self.dir / name.replace(":", "-"))
        return str(fixture_path(self.work, name))

    def fmt(self, text: str) -> str:
        return PLACEHOLDER.sub(lambda m: self.path(m.group(1)), text)

    def argv(self, which: list[str] | None = None) -> list[str]:
        return [self.fmt(a) for a in (self.case.argv if which is None else which)]

    def prepare(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        names = self.case.placeholders()
        if "userdir" in names:
            for rel, data in USER_FILES.items():
                p = self.dir / "userdir" / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            (self.dir / "userdir" / "empty-subfolder").mkdir()
        if "hidden" in names:
            (self.dir / "hidden").mkdir()
            (self.dir / "hidden" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
            (self.dir / "hidden" / ".cache").mkdir()
            (self.dir / "hidden" / ".cache" / "x").write_bytes(b"x")
        if "emptyout" in names:
            (self.dir / "empty-out").mkdir()
        if "userfile" in names:
            (self.dir / "userfile").write_bytes(b"precious\n")
        for n in names:
            if n.startswith("copy:"):
                shutil.copytree(fixture_path(self.work, n[5:]), self.path(n), symlinks=True)

    def protected_paths(self) -> dict[str, bool]:
        """Path -> strict. A user's path (strict) must stay exactly as it was; in a depthmux folder (a fixture,
        a copy of a run) nothing may be deleted or changed, but a new file (a run marker) is not a loss."""
        out = {}
        for n in sorted(self.case.placeholders()):
            if n in ("userdir", "userfile", "hidden"):
                out[self.path(n)] = True
            elif (n.startswith("copy:") and n not in self.case.mutable) or (
                n not in PER_CASE and not n.startswith("copy:") and n not in NOT_PROTECTED
            ):
                out[self.path(n)] = False
        return out

    def is_copy(self, path: str) -> bool:
        return any(path == self.path(n) for n in self.case.placeholders() if n.startswith("copy:"))

    def file(self, name: str, rel: str = "") -> Path:
        return Path(self.path(name)) / rel if rel else Path(self.path(name))


def reset_process_state() -> None:
    """Undo what a case may leave behind in a worker (threads, grad mode, default dtype)."""
    try:
        import torch

        torch.set_num_threads(1)
        torch.set_grad_enabled(True)
        torch.set_default_dtype(torch.float32)
    except ImportError:
        pass


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------

FIXTURES: dict[str, Callable] = {}
ALIASES: dict[str, tuple[str, str]] = {}  # name -> (fixture, relative path inside it)
NOT_PROTECTED = {"missing", "unwritable", "unwritable_file", "devfull", "minilm"}


def fixture(fn: Callable) -> Callable:
    FIXTURES[fn.__name__] = fn
    return fn


def fixture_path(work: Path, name: str) -> Path:
    if name == "missing":
        return Path(work) / "fixtures" / "does-not-exist"
    if name == "unwritable":
        return Path(UNWRITABLE)
    if name == "unwritable_file":
        return Path(UNWRITABLE) / "result.json"
    if name == "devfull":
        return Path("/dev/full")
    if name == "minilm":
        from depthmux.assets import minilm_path

        return minilm_path()
    if name in ALIASES:
        base, rel = ALIASES[name]
        return fixture_path(work, base) / rel
    return Path(work) / "fixtures" / (name + EXTENSIONS.get(name, ""))


EXTENSIONS = {
    "train3": ".csv",
    "dev3": ".csv",
    "train2": ".csv",
    "dev2": ".csv",
    "train_big": ".csv",
    "corpus": ".txt",
    "file": ".txt",
    "binfile": ".bin",
}


def build_fixtures(cases: list[Case], work: Path, log=print) -> None:
    needed: set[str] = set()
    for c in cases:
        for n in c.placeholders():
            n = n[5:] if n.startswith("copy:") else n
            if n in PER_CASE or n in NOT_PROTECTED:
                continue
            needed.add(ALIASES[n][0] if n in ALIASES else n)
    for name in sorted(needed):
        ensure(work, name, log)


def ensure(work: Path, name: str, log=print) -> Path:
    if name in ALIASES:
        ensure(work, ALIASES[name][0], log)
        return fixture_path(work, name)
    path = fixture_path(work, name)
    marker = Path(work) / "fixtures" / f".{name}.done"
    if marker.exists():
        return path
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}")
    if path.exists() or path.is_symlink():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    FIXTURES[name](path, lambda n: ensure(work, n, log))
    marker.write_text("")
    log(f"  fixture {name} ({time.time() - t0:.1f} s)")
    return path


def _cli(argv: list[str]) -> None:
    """Run a depthmux command to build a fixture (it must succeed)."""
    from depthmux.cli import main

    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"fixture command failed ({e.code}): depthmux {' '.join(map(str, argv))}") from None
    reset_process_state()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


WORDS = {
    "sports": ["game", "team", "score", "win", "coach", "ball", "match", "goal"],
    "politics": ["vote", "law", "senate", "bill", "court", "party", "tax", "policy"],
    "tech": ["chip", "code", "cloud", "data", "phone", "robot", "app", "model"],
}


def _rows(n: int, seed: int, labels=("sports", "politics", "tech")) -> list[tuple[str, str]]:
    import random

    r = random.Random(seed)
    return [
        (" ".join(r.choice(WORDS[lab]) for _ in range(6)), lab) for lab in (labels[i % len(labels)] for i in range(n))
    ]


def _csv(rows, header=("text", "label")) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


@fixture
def emptydir(p, _):
    p.mkdir()


@fixture
def file(p, _):
    _write(p, "not a folder\n")


@fixture
def binfile(p, _):
    _write(p, bytes(range(256)) * 64)


@fixture
def symlink_loop(p, _):
    p.symlink_to(p)


@fixture
def train3(p, _):
    _write(p, _csv(_rows(90, 0)))


@fixture
def dev3(p, _):
    _write(p, _csv(_rows(30, 1)))


@fixture
def train2(p, _):
    _write(p, _csv(_rows(80, 2, ("sports", "tech"))))


@fixture
def train_big(p, _):
    _write(p, _csv(_rows(2000, 12)))


@fixture
def dev3_csv(p, need):
    """A folder holding a copy of dev3 as dev.csv (for cases that must not lose it)."""
    p.mkdir()
    shutil.copy(need("dev3"), p / "dev.csv")


@fixture
def dev2(p, _):
    _write(p, _csv(_rows(24, 3, ("sports", "tech"))))


@fixture
def data_files(p, _):
    """Broken and unusual labelled files (each name below is an alias of this folder)."""
    good = _csv(_rows(30, 4))
    lines = good.splitlines(keepends=True)
    files = {
        "unbalanced.csv": "".join(lines[:10]) + '"an opening quote that never closes,sports\n' + "".join(lines[10:]),
        "latin1.csv": good.encode() + "caf\xe9 au lait,tech\n".encode("latin-1"),
        "bom.csv": b"\xef\xbb\xbf" + good.encode(),
        "utf16.csv": good.encode("utf-16"),
        "binary.csv": bytes(range(256)) * 16,
        "empty.csv": b"",
        "header_only.csv": b"text,label\n",
        "no_label_col.csv": _csv([(t, lab) for t, lab in _rows(20, 5)], header=("text", "category")),
        "one_class.csv": _csv(_rows(20, 6, ("sports",))),
        "dev_new_label.csv": _csv([*_rows(12, 7), ("a brand new class here", "weather")]),
        "missing_label.csv": good + "a row without a label,\n",
        "empty_text.csv": good + ",tech\n",
        "nul.csv": good.encode() + b"nul\x00byte row,tech\n",
        "huge_field.csv": good + ("word " * 200_000) + ",tech\n",
        "ragged.csv": good + "too,many,fields,here\n",
        "numbers.csv": _csv([(str(i), str(i % 2)) for i in range(30)]),
        "train.tsv": good.replace(",", "\t"),
        "train.jsonl": "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in _rows(30, 8)),
        "broken.jsonl": "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in _rows(10, 9))
        + '{"text": "x",\n',
        "list.json": json.dumps([1, 2, 3]),
        "data.xlsx": b"PK\x03\x04 not really a spreadsheet",
        "noext": good,
        "crlf.csv": good.replace("\n", "\r\n"),
        "label_float.csv": _csv([(t, "1.0" if i % 2 else "0") for i, (t, _) in enumerate(_rows(30, 10))]),
        "pairs.csv": _csv([(t, t[::-1], lab) for t, lab in _rows(30, 11)], header=("a", "b", "label")),
    }
    for name, data in files.items():
        _write(p / name, data)
    (p / "folder.csv").mkdir()


for _alias in [
    "unbalanced.csv",
    "latin1.csv",
    "bom.csv",
    "utf16.csv",
    "binary.csv",
    "empty.csv",
    "header_only.csv",
    "no_label_col.csv",
    "one_class.csv",
    "dev_new_label.csv",
    "missing_label.csv",
    "empty_text.csv",
    "nul.csv",
    "huge_field.csv",
    "ragged.csv",
    "numbers.csv",
    "train.tsv",
    "train.jsonl",
    "broken.jsonl",
    "list.json",
    "data.xlsx",
    "noext",
    "crlf.csv",
    "label_float.csv",
    "pairs.csv",
    "folder.csv",
]:
    ALIASES["d_" + re.sub(r"[^a-z0-9]", "_", _alias.lower())] = ("data_files", _alias)

GOOD_TSV = "".join(f"a fine sentence number {i}\t{i % 2}\n" for i in range(64))


@fixture
def glue(p, _):
    """A small GLUE folder: SST-2 (64 train / 32 dev) and RTE (pairs)."""
    _write(p / "SST-2" / "train.tsv", "sentence\tlabel\n" + GOOD_TSV)
    _write(p / "SST-2" / "dev.tsv", "sentence\tlabel\n" + "".join(GOOD_TSV.splitlines(keepends=True)[:32]))
    rte = "index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\tthe cat sat number {i}\tan animal sat {i}\t{'entailment' if i % 2 else 'not_entailment'}\n"
        for i in range(48)
    )
    _write(p / "RTE" / "train.tsv", rte)
    _write(p / "RTE" / "dev.tsv", rte)


@fixture
def glue_bad(p, _):
    """GLUE folders with one broken SST-2 each (aliases glue_latin1, ...)."""
    header = b"sentence\tlabel\n"
    good = GOOD_TSV.encode()
    variants = {
        "latin1": header + good + b"caf\xe9 au lait\t1\n",
        "empty": b"",
        "header_only": header,
        "malformed": header + good + b"a row without its label\n",
        "bad_label": header + good + b"a sentence\t7\n",
        "binary": bytes(range(256)) * 8,
        "wrong_header": b"text\ttarget\n" + good,
        "quote": header + good + b'"an unbalanced quote\t1\n' + good,
    }
    for name, data in variants.items():
        _write(p / name / "SST-2" / "train.tsv", data)
        _write(p / name / "SST-2" / "dev.tsv", data)


for _v in ["latin1", "empty", "header_only", "malformed", "bad_label", "binary", "wrong_header", "quote"]:
    ALIASES[f"glue_{_v}"] = ("glue_bad", _v)


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from depthmux.assets import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def _tiny_bert_model():
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=_minilm_tokenizer().vocab_size,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return tf.BertModel(cfg)  # with its pooler: loading it prints no report of missing weights


@fixture
def tiny_bert(p, _):
    _tiny_bert_model().save_pretrained(p)
    _minilm_tokenizer().save_pretrained(p)


def _edit_config(p: Path, **values) -> None:
    cfg = json.loads((p / "config.json").read_text())
    cfg.update(values)
    (p / "config.json").write_text(json.dumps(cfg))


def _broken_variants(p: Path, source: Path) -> None:
    """Copies of the model folder ``source`` broken in one way each."""

    def copy(name):
        shutil.copytree(source, p / name)
        return p / name

    d = copy("trunc")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    d = copy("garbage")
    (d / "model.safetensors").write_bytes(os.urandom(4096))
    d = copy("empty_weights")
    (d / "model.safetensors").write_bytes(b"")
    d = copy("heads0")
    _edit_config(d, num_attention_heads=0)
    d = copy("vocab_str")
    _edit_config(d, vocab_size="many")
    d = copy("hidden_neg")
    _edit_config(d, hidden_size=-48)
    d = copy("config_list")
    (d / "config.json").write_text("[1, 2, 3]")
    d = copy("config_trunc")
    (d / "config.json").write_text((d / "config.json").read_text()[:30])
    d = copy("no_weights")
    (d / "model.safetensors").unlink()
    d = copy("no_tokenizer")
    for f in d.glob("tokenizer*"):
        f.unlink()
    for f in d.glob("special_tokens_map.json"):
        f.unlink()
    d = copy("tokenizer_garbage")
    (d / "tokenizer.json").write_bytes(b"\x00garbage{")
    d = copy("weights_dir")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").mkdir()


@fixture
def bert_broken(p, need):
    _broken_variants(p, need("tiny_bert"))


VARIANTS = [
    "trunc",
    "garbage",
    "empty_weights",
    "heads0",
    "vocab_str",
    "hidden_neg",
    "config_list",
    "config_trunc",
    "no_weights",
    "no_tokenizer",
    "tokenizer_garbage",
    "weights_dir",
]
for _v in VARIANTS:
    ALIASES[f"bert_{_v}"] = ("bert_broken", _v)
    ALIASES[f"llama_{_v}"] = ("llama_broken", _v)


@fixture
def corpus(p, _):
    _write(p, "\n\n".join(f"paragraph {i}: " + "the word and a text of many words " * 6 for i in range(40)))


@fixture
def corpora(p, _):
    docs = [f"paragraph {i}: " + "the word and a text of many words " * 6 for i in range(40)]
    files = {
        "empty.txt": b"",
        "whitespace.txt": b"   \n\n\t\n\n  \n",
        "latin1.txt": "\n\n".join(docs).encode() + b"\n\ncaf\xe9 cr\xe8me " * 50,
        "binary.txt": bytes(range(256)) * 64,
        "bom.txt": b"\xef\xbb\xbf" + "\n\n".join(docs).encode(),
        "utf16.txt": "\n\n".join(docs).encode("utf-16"),
        "single_doc.txt": " ".join(docs).encode(),
        "two_docs.txt": (docs[0] + "\n\n" + docs[1]).encode(),
        "docs.jsonl": "".join(json.dumps({"text": d}) + "\n" for d in docs).encode(),
        "broken.jsonl": ("".join(json.dumps({"text": d}) + "\n" for d in docs[:5]) + '{"text": "x\n').encode(),
        "numbers.jsonl": "".join(json.dumps({"text": i}) + "\n" for i in range(20)).encode(),
        "notext.jsonl": "".join(json.dumps({"body": d}) + "\n" for d in docs).encode(),
        "huge_line.txt": ("word " * 400_000).encode(),
        "zero_width.txt": "\u200b\u200b\n\n\u00a0\u200c\n\n\ufeff\u2060\n".encode(),
        "data.csv": b"text\nhello\n",
    }
    for name, data in files.items():
        _write(p / name, data)
    for i, d in enumerate(docs[:10]):
        _write(p / "folder" / f"doc{i}.txt", d)
    (p / "empty_folder").mkdir()


CORPORA = [
    "empty.txt",
    "whitespace.txt",
    "latin1.txt",
    "binary.txt",
    "bom.txt",
    "utf16.txt",
    "single_doc.txt",
    "two_docs.txt",
    "docs.jsonl",
    "broken.jsonl",
    "numbers.jsonl",
    "notext.jsonl",
    "huge_line.txt",
    "zero_width.txt",
    "data.csv",
    "folder",
    "empty_folder",
]
for _c in CORPORA:
    ALIASES["c_" + re.sub(r"[^a-z0-9]", "_", _c)] = ("corpora", _c)


@fixture
def bpe(p, need):
    from depthmux.data.text import train_bpe_tokenizer

    docs = Path(need("corpus")).read_text().split("\n\n")
    train_bpe_tokenizer(docs, vocab_size=300).save_pretrained(p)


@fixture
def tiny_llama(p, need):
    """A transformers LlamaForCausalLM (4 layers, d = 32) with a 300-token BPE tokenizer."""
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(need("bpe"))
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    tf.LlamaForCausalLM(cfg).save_pretrained(p)
    tok.save_pretrained(p)


@fixture
def llama_broken(p, need):
    _broken_variants(p, need("tiny_llama"))


@fixture
def prompts(p, _):
    files = {
        "good.txt": b"hello there\nthe word\n",
        "latin1.txt": b"caf\xe9 au lait\ncr\xe8me\n",
        "binary.txt": bytes(range(256)) * 4,
        "bom.txt": b"\xef\xbb\xbfhello there\n",
        "empty.txt": b"",
        "blank_lines.txt": b"\n\n   \n",
        "utf16.txt": "hello there\n".encode("utf-16"),
        "many.txt": "".join(f"prompt {i}\n" for i in range(40)).encode(),
        "long_line.txt": ("word " * 5000 + "\n").encode(),
        "crlf.txt": b"hello there\r\nthe word\r\n",
    }
    for name, data in files.items():
        _write(p / name, data)


for _c in ["good.txt", "latin1.txt", "binary.txt", "bom.txt", "empty.txt", "blank_lines.txt", "utf16.txt"]:
    ALIASES["p_" + re.sub(r"[^a-z0-9]", "_", _c)] = ("prompts", _c)
for _c in ["many.txt", "long_line.txt", "crlf.txt"]:
    ALIASES["p_" + re.sub(r"[^a-z0-9]", "_", _c)] = ("prompts", _c)

MUX_SMALL = ["--no-bench", "--shuffles", "1", "--epochs", "1", "--min-steps", "0", "--max-train", "64"]


@fixture
def mux3(p, need):
    """A finished mux run on the three-class CSV (tiny BERT): checkpoint alias ck3."""
    _cli(
        ["mux", "train", "--model", need("tiny_bert"), "--train", need("train3"), "--dev", need("dev3")]
        + ["--n", "2", *MUX_SMALL, "--out", p]
    )


@fixture
def mux2(p, need):
    """A finished mux run on the small SST-2 (tiny BERT): checkpoint alias ck2."""
    _cli(
        ["mux", "train", "--model", need("tiny_bert"), "--task", "sst2", "--data-dir", need("glue")]
        + ["--n", "2", *MUX_SMALL, "--out", p]
    )


ALIASES["ck3"] = ("mux3", "n2-l0-reversible/best")
ALIASES["ck2"] = ("mux2", "n2-l0-reversible/best")
ALIASES["teacher3"] = ("mux3", "teacher")


@fixture
def ck_broken(p, need):
    """Copies of ck2 broken in one way each."""
    ck = Path(need("ck2"))

    def variant(name, edit):
        d = p / name
        shutil.copytree(ck, d)
        state = json.loads((d / "state.json").read_text())
        text = edit(state, d)
        (d / "state.json").write_text(text if isinstance(text, str) else json.dumps(state))

    def set_config(**values):
        return lambda s, _: s["config"].update(values)

    variant("truncated", lambda s, _: json.dumps(s)[:40])
    variant("not_object", lambda s, _: "[1, 2, 3]")
    variant("n4", set_config(n=4))
    variant("n5", set_config(n=5))
    variant("n_string", set_config(n="2"))
    variant("l99", set_config(prefill_layers=99))
    variant("mixer", set_config(mixer="bogus"))
    variant("backbone_missing", set_config(backbone=str(p / "nowhere")))
    variant("kind", lambda s, _: s.update(kind="something-else"))
    variant("format", lambda s, _: s.update(format_version=99))
    variant("bad_tensors", lambda s, d: [f.write_bytes(f.read_bytes()[:50]) for f in d.glob("*.safetensors")])
    variant("no_head", lambda s, d: (d / "head.safetensors").unlink())
    variant("no_state", lambda s, d: None)
    (p / "no_state" / "state.json").unlink()


CK_VARIANTS = ["truncated", "not_object", "n4", "n5", "n_string", "l99", "mixer", "backbone_missing", "kind"]
CK_VARIANTS += ["format", "bad_tensors", "no_head", "no_state"]
for _v in CK_VARIANTS:
    ALIASES[f"ck_{_v}"] = ("ck_broken", _v)

LM_SMALL = ["--tokenizer", "bpe:300", "--hidden", "32", "--layers", "4", "--heads", "4", "--steps", "2"]
LM_SMALL += ["--batch-size", "2", "--block-size", "16", "--no-progress"]


@fixture
def lmrun(p, need):
    """A finished 2-step lm run: MoR (expert-choice, middle-cycle, 2 recursions)."""
    _cli(
        ["lm", "train", "--out", p, "--corpus", need("corpus"), *LM_SMALL]
        + ["--sharing", "middle_cycle", "--recursions", "2", "--router", "expert"]
    )


@fixture
def lmrun_vanilla(p, need):
    """A finished 2-step vanilla lm run (3 steps, lr 0.001, as in issue 21)."""
    small = list(LM_SMALL)
    small[small.index("--steps") + 1] = "3"
    _cli(["lm", "train", "--out", p, "--corpus", need("corpus"), *small, "--lr", "0.001"])


@fixture
def recursive(p, need):
    """A recursive model folder converted from tiny_llama (cycle, 2 recursions)."""
    _cli(["lm", "convert", "--out", p, "--from", need("tiny_llama"), "--recursions", "2"])


@fixture
def eerun(p, need):
    """A finished 2-step ee run on tiny_llama (exit layer 1, alpha 0.5)."""
    _cli(
        ["ee", "train", "--out", p, "--from", need("tiny_llama"), "--corpus", need("corpus"), "--steps", "2"]
        + ["--batch-size", "2", "--block-size", "16", "--exit-layer", "1", "--no-progress"]
    )


@fixture
def run_broken(p, need):
    """lm run folders broken in one way each."""
    src = Path(need("lmrun"))
    for name in ("trunc_config", "no_model", "log_garbage", "trunc_weights"):
        shutil.copytree(src, p / name)
    (p / "trunc_config" / "train_config.json").write_text('{"model": {"sharing": "cyc')
    shutil.rmtree(p / "no_model" / "model")
    for ck in (p / "no_model" / "checkpoints").iterdir():
        shutil.rmtree(ck)
    (p / "log_garbage" / "log.jsonl").write_bytes(b"\x00\xff garbage\n{not json\n")
    for w in (p / "trunc_weights").rglob("model.safetensors"):
        w.write_bytes(w.read_bytes()[:100])


for _v in ("trunc_config", "no_model", "log_garbage", "trunc_weights"):
    ALIASES[f"run_{_v}"] = ("run_broken", _v)


# ---------------------------------------------------------------------------------------------
# checks (None: fine; a string: what is wrong)
# ---------------------------------------------------------------------------------------------


def exists(*specs: str) -> Callable:
    """Each ``placeholder/relative/path`` (glob allowed) must exist after the case."""

    def check(ctx: Context):
        for spec in specs:
            name, _, rel = spec.partition("/")
            base = Path(ctx.path(name))
            if not (list(base.glob(rel)) if rel else [base] if base.exists() else []):
                return f"{spec} was not written"
        return None

    return check


def stdout_has(pattern: str, *also: Callable) -> Callable:
    def check(ctx: Context):
        if not re.search(pattern, ctx.stdout + ctx.stderr, re.S | re.M):
            return f"output lacks /{pattern}/: {(ctx.stdout + ctx.stderr)[-200:]!r}"
        for c in also:
            if (r := c(ctx)) is not None:
                return r
        return None

    return check


def all_of(*checks: Callable) -> Callable:
    def check(ctx):
        for c in checks:
            if (r := c(ctx)) is not None:
                return r
        return None

    return check


def json_stdout(test: Callable[[dict], str | None]) -> Callable:
    def check(ctx):
        text = ctx.stdout.strip()
        try:
            data = json.loads(text)  # machine-readable: nothing but the JSON document on stdout
        except (ValueError, json.JSONDecodeError) as e:
            return f"stdout is not JSON ({e}): {text[:120]!r}"
        return test(data)

    return check


def finite_numbers(data) -> str | None:
    """Every number in a JSON document is finite."""
    bad = []

    def walk(x, where):
        if isinstance(x, float) and not math.isfinite(x):
            bad.append(where)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{where}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")

    walk(data, "$")
    return f"non-finite numbers at {bad[:3]}" if bad else None


def log_steps(out: str, expected: int) -> Callable:
    """``{out}/log.jsonl`` logs training steps 1..expected once each."""

    def check(ctx):
        log = Path(ctx.path(out)) / "log.jsonl"
        if not log.is_file():
            return f"{log} missing"
        steps = []
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "loss" in rec and "step" in rec:
                steps.append(rec["step"])
        if steps != list(range(1, expected + 1)):
            return f"logged steps {steps[:5]}...{steps[-3:]} (expected 1..{expected} once each)"
        return None

    return check


def generated(n_prompts: int) -> Callable:
    """``lm generate`` printed one ``[i]`` line per prompt."""

    def check(ctx):
        found = set(re.findall(r"^\[(\d+)\]", ctx.stdout, re.M))
        want = {str(i) for i in range(n_prompts)}
        return None if want <= found else f"printed prompts {sorted(found)} of {n_prompts}"

    return check


def says(pattern: str) -> Callable:
    """The output says something matching ``pattern`` (a warning or a note the issue asks for)."""
    return stdout_has(pattern)


# ---------------------------------------------------------------------------------------------
# the Python API cases (run in a worker; return value in ctx.value)
# ---------------------------------------------------------------------------------------------


def run_api(case: Case, ctx: Context) -> dict:
    from depthmux.errors import DepthmuxError

    try:
        ctx.value = case.api(ctx)
        return {"code": 0}
    except DepthmuxError as e:
        return {"code": 2, "api_error": str(e)}
    except BaseException as e:
        return {"code": 1, "exc": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}


_LLM_CACHE: dict = {}


def _llm(ctx: Context, **kw):
    from depthmux.engine import LLM

    return LLM.from_pretrained(ctx.path("tiny_llama"), **kw)


def _greedy_ids(ctx: Context, prompt="hello there", n=4):
    from depthmux.engine import SamplingParams

    return _llm(ctx).generate([prompt], SamplingParams(max_new_tokens=n))[0].token_ids


def sp(**kw):
    """``SamplingParams(**kw)``."""

    def fn(ctx):
        from depthmux.engine import SamplingParams

        return SamplingParams(**kw)

    fn.__name__ = "SamplingParams(" + ", ".join(f"{k}={v!r}"[:40] for k, v in kw.items()) + ")"
    return fn


def gen(prompts="hello there", params=None, llm_kw=None, name=None, tokenizer=True, raw=False):
    """``LLM.from_pretrained(tiny_llama, **llm_kw).generate(prompts, SamplingParams(**params))``."""

    def fn(ctx):
        from depthmux.engine import LLM, SamplingParams

        llm = _llm(ctx, **(llm_kw or {}))
        if not tokenizer:
            llm = LLM(llm.model)
        p = params
        if raw:
            pass
        elif isinstance(params, dict):
            p = SamplingParams(**params)
        elif isinstance(params, list):
            p = [SamplingParams(**x) if isinstance(x, dict) else x for x in params]
        return llm.generate(prompts, p)

    shown = f"LLM.from_pretrained({{tiny_llama}}, **{llm_kw or {}}).generate({prompts!r}"[:100]
    fn.__name__ = name or shown + (f", {params!r})" if raw else f", SamplingParams(**{params!r}))")[:70]
    return fn


def outputs_valid(n: int, max_new: int | None = None) -> Callable:
    def check(ctx):
        outs = ctx.value
        if not isinstance(outs, list) or len(outs) != n:
            return f"expected {n} outputs, got {type(outs).__name__} of {len(outs) if isinstance(outs, list) else '?'}"
        for o in outs:
            if not o.finished or not all(isinstance(t, int) and 0 <= t < 300 for t in o.token_ids):
                return f"bad output {o.token_ids[:8]} finished={o.finished}"
            if max_new is not None and len(o.token_ids) > max_new:
                return f"{len(o.token_ids)} tokens > max_new_tokens {max_new}"
        return None

    return check


def equals_greedy(ctx):
    outs = ctx.value
    if not isinstance(outs, list) or not outs:
        return "no outputs"
    greedy = _greedy_ids(ctx, n=len(outs[0].token_ids) or 4)
    if outs[0].token_ids != greedy:
        return f"tokens {outs[0].token_ids} differ from greedy {greedy} (a near-zero temperature is not greedy)"
    return None


def api(fn: Callable, note: str | None = None) -> Callable:
    if note:
        fn.__name__ = note
    return fn


def _load_classifier(name: str, rel: str = ""):
    def fn(ctx):
        from depthmux.multiplexing import load_classifier

        return load_classifier(ctx.fmt("{" + name + "}") + rel)

    fn.__name__ = f"load_classifier({{{name}}}{rel})"
    return fn


def _predict(texts, name="ck3"):
    def fn(ctx):
        from depthmux.multiplexing import load_classifier

        return load_classifier(ctx.path(name)).predict(texts)

    fn.__name__ = f"load_classifier({{{name}}}).predict({texts!r})"[:90]
    return fn


def predictions(n: int, classes: int) -> Callable:
    def check(ctx):
        v = ctx.value
        try:
            vals = [int(x) for x in v.tolist()]
        except Exception as e:
            return f"predict returned {type(v).__name__}: {e}"
        if len(vals) != n or not all(0 <= x < classes for x in vals):
            return f"predictions {vals[:8]} (expected {n} in [0, {classes}))"
        return None

    return check


def _call(path: str, fn_name: str, *args, **kw):
    """Call ``depthmux.<path>.<fn_name>`` with placeholders in string arguments resolved."""

    def fn(ctx):
        import importlib

        mod = importlib.import_module(f"depthmux.{path}")
        a = [ctx.fmt(x) if isinstance(x, str) else x for x in args]
        k = {key: ctx.fmt(v) if isinstance(v, str) else v for key, v in kw.items()}
        return getattr(mod, fn_name)(*a, **k)

    shown = ", ".join([*(repr(a)[:50] for a in args), *(f"{k}={v!r}"[:40] for k, v in kw.items())])
    fn.__name__ = f"{path}.{fn_name}({shown})"
    return fn


# ---------------------------------------------------------------------------------------------
# subprocess cases (kill -9 / resume, Ctrl-C, the console entry point, memory limits)
# ---------------------------------------------------------------------------------------------


def _command(case: Case) -> list[str]:
    if case.mode == "console":
        script = Path(sys.executable).with_name("depthmux")
        if script.exists():
            return [str(script)]
    return [sys.executable, "-m", "depthmux"]


def limit_memory(nbytes: int) -> None:
    """Cap this process's address space (a memory bomb then fails here instead of waking the OOM killer on a
    machine shared with others)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))


MEMORY_LIMIT = 8 * 2**30


def _limit(nbytes: int | None):
    if nbytes is None:
        return None

    def pre():
        limit_memory(nbytes)

    return pre


def run_process_case(case: Case, ctx: Context) -> dict:
    env = {**os.environ, **case.env}
    cmd = _command(case)
    out_f, err_f = ctx.dir / ".stdout", ctx.dir / ".stderr"
    deadline = time.time() + case.timeout
    first = None
    if case.mode in ("kill", "interrupt", "concurrent"):
        with open(ctx.dir / ".first.stdout", "wb") as fo, open(ctx.dir / ".first.stderr", "wb") as fe:
            proc = subprocess.Popen(
                [*cmd, *ctx.argv()],
                cwd=ctx.dir,
                env=env,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
                preexec_fn=_limit(case.rlimit_as or MEMORY_LIMIT),
            )
            trigger = ctx.fmt(case.wait_for)
            while proc.poll() is None and time.time() < deadline and not list(Path("/").glob(trigger.lstrip("/"))):
                time.sleep(0.1)
            if proc.poll() is not None and case.mode in ("kill", "concurrent"):
                return {
                    "code": proc.returncode,
                    "stdout": "",
                    "stderr": "",
                    "exc": f"the run ended (status {proc.returncode}) before {case.wait_for} appeared",
                }
            if time.time() >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"hang": True}
            if case.mode == "interrupt":
                os.kill(proc.pid, signal.SIGINT)
                try:
                    code = proc.wait(timeout=max(1.0, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return {"hang": True}
                return {
                    "code": code,
                    "stdout": _text(ctx.dir / ".first.stdout"),
                    "stderr": _text(ctx.dir / ".first.stderr"),
                }
            if case.mode == "concurrent":  # the second command runs while the first still does
                first = proc
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        argv = ctx.argv(case.resume)
    else:
        argv = ctx.argv()
    with open(out_f, "wb") as fo, open(err_f, "wb") as fe:
        proc = subprocess.Popen(
            [*cmd, *argv],
            cwd=ctx.dir,
            env=env,
            stdout=fo,
            stderr=fe,
            start_new_session=True,
            preexec_fn=_limit(case.rlimit_as or MEMORY_LIMIT),
        )
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"hang": True, "stdout": _text(out_f), "stderr": _text(err_f)}
        finally:
            first_alive = first is not None and first.poll() is None
            if first is not None:
                if first_alive:
                    os.killpg(first.pid, signal.SIGKILL)
                first.wait()
    if first is not None and not first_alive:
        return {
            "code": code,
            "stdout": _text(out_f),
            "stderr": _text(err_f),
            "exc": "the pass could not test this: the first run ended before the second did",
        }
    if code < 0:
        return {"code": code, "stdout": _text(out_f), "stderr": _text(err_f), "exc": f"killed by signal {-code}"}
    return {"code": code, "stdout": _text(out_f), "stderr": _text(err_f)}


def _text(p: Path) -> str:
    return p.read_bytes().decode("utf-8", "replace") if p.exists() else ""


from hostile_table import all_cases  # noqa: E402,F401  (the table imports the helpers above)
