"""A user's own labelled data: CSV, TSV, JSON lines or Parquet files read through Hugging Face
``datasets`` (local files only, nothing from the hub), turned into :class:`ClassificationDataset`.

``load_user_splits(UserDataSpec(...))`` returns ``{"train", "validation", "dev"}``:

* ``train`` and ``dev`` are the user's files; ``validation`` (model selection, never the reported
  split, SPEC 1.4) is the user's ``val_file`` or a seeded ``val_fraction`` of train;
* one text column (single sentences) or two (pairs); any number of classes, the label names being
  the label column's values as written (sorted numerically when they are all integers);
* the data set is named after the train file's stem (``reviews.csv`` -> ``reviews``).

Every problem is one line naming the file (and row): a folder or a missing file, an unknown
extension, an empty file, a missing column, a blank text, a missing label, a label that appears in
dev (or validation) but never in train.

CSV and TSV files hold one row per line: a quoted field that runs on past its line, or a quote
that never closes cleanly, is refused naming the line where it opens (:func:`check_quotes`). An
unbalanced quote otherwise merges the rows up to the next quote into one text, without a word; a
text that really spans lines cannot be told apart from that, so it belongs in a JSON lines file.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from depthmux.data.classification import MAX_TEXT_CHARS, ClassificationDataset, Text, split_indices
from depthmux.errors import DepthmuxError, require
from depthmux.utils.checks import check_float, check_seed
from depthmux.utils.text import is_blank

#: File extension -> (``datasets`` builder, its extra arguments).
FORMATS: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
DEFAULT_VAL_FRACTION = 0.1


@dataclass
class UserDataSpec:
    """Where a user's data is and which columns hold what.

    Attributes:
        train_file, dev_file: the training and the reported evaluation file.
        text_columns: one column name (single texts) or two (pairs, e.g. question and sentence).
        label_column: the column of class labels (any values; their names become the label names).
        val_file: a validation file for model selection; None: ``val_fraction`` of train, seeded.
        val_fraction: the fraction of train held out for validation when there is no ``val_file``.
        seed: the seed of that hold-out.
    """

    train_file: str
    dev_file: str
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    val_file: str | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 1234

    def validate(self) -> UserDataSpec:
        require(isinstance(self.train_file, str) and self.train_file, "--train must name a file")
        require(isinstance(self.dev_file, str) and self.dev_file, "--dev must name a file (the reported split)")
        require(
            isinstance(self.text_columns, list) and len(self.text_columns) in (1, 2),
            f"--text-column takes one column (single texts) or two (pairs), got {len(self.text_columns)}: "
            f"{self.text_columns}",
        )
        require(
            all(isinstance(c, str) and c.strip() for c in self.text_columns), "--text-column names must not be empty"
        )
        require(len(set(self.text_columns)) == len(self.text_columns), f"--text-column repeats {self.text_columns}")
        require(isinstance(self.label_column, str) and self.label_column.strip(), "--label-column must not be empty")
        require(
            self.label_column not in self.text_columns,
            f"--label-column {self.label_column!r} is also a --text-column",
        )
        check_float("--val-split", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_seed("split seed", self.seed)
        for option, path in (("--train", self.train_file), ("--dev", self.dev_file), ("--val", self.val_file)):
            if path is not None:
                check_data_file(path, option)
        return self

    @property
    def name(self) -> str:
        """The data set's name: the train file's stem."""
        return Path(self.train_file).stem


def file_format(path: str | os.PathLike) -> tuple[str, dict]:
    """The ``datasets`` builder for a file, by extension; one line for an unknown one."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DepthmuxError(
            f"{path}: unknown data file extension {suffix or '(none)'!r}: use one of {', '.join(FORMATS)}"
        )
    return FORMATS[suffix]


def check_data_file(path: str | os.PathLike, option: str = "data file") -> tuple[str, dict]:
    """:func:`file_format` of an existing file: one line for a folder, a missing path or an unknown
    extension (checked up front, before any work)."""
    path = Path(path)
    if path.is_dir():
        raise DepthmuxError(f"{option} {path} is a directory, not a data file: name a file inside it")
    fmt = file_format(path)
    if not path.is_file():
        raise DepthmuxError(f"data file not found: {path}")
    return fmt


def check_quotes(path: str | os.PathLike, delimiter: str) -> None:
    """One line naming the line where a quoted field of a CSV/TSV file opens, when it runs on past that
    line or never closes cleanly (module docstring). A file that is not UTF-8 is left to the reader."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    line = 1  # where the next record starts
    try:
        for _ in reader:
            if reader.line_num > line:
                raise DepthmuxError(
                    f"{path}: line {line}: a quoted field runs on to line {reader.line_num} (an unbalanced quote "
                    "merges rows); close the quote, or use JSON lines for texts with line breaks"
                )
            line = reader.line_num + 1
    except csv.Error as e:
        raise DepthmuxError(f"{path}: line {line}: unbalanced quote ({e}); close or remove it") from None


def read_table(path: str | os.PathLike, columns: list[str]) -> dict[str, list]:
    """The named columns of a data file as Python lists, read by ``datasets`` from the local file.

    Raises one line for a missing or empty file, a file ``datasets`` cannot parse, no rows, or a
    missing column (naming the columns the file has).
    """
    import datasets

    path = Path(path)
    builder, kwargs = check_data_file(path)
    size = path.stat().st_size
    if size == 0 or (builder != "parquet" and size <= 4096 and is_blank(path.read_bytes().decode("utf-8", "replace"))):
        raise DepthmuxError(f"{path}: file is empty")
    if builder == "csv":
        check_quotes(path, kwargs.get("sep", ","))
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # our one line says it
    with tempfile.TemporaryDirectory(prefix="depthmux-data-") as cache:
        try:
            table = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, **kwargs)
        except Exception as e:  # pandas/pyarrow parse errors arrive wrapped in datasets' own exceptions
            if builder == "csv" and len([ln for ln in path.read_bytes().splitlines() if ln.strip()]) <= 1:
                raise DepthmuxError(f"{path}: no rows after the header") from None
            cause = e.__cause__ or e.__context__ or e
            reason = (str(cause) or type(cause).__name__).strip().splitlines()[0][:200]
            raise DepthmuxError(f"{path}: cannot read it as {builder.upper()}: {reason}") from None
        have = list(table.column_names)
        if len(table) == 0:
            raise DepthmuxError(f"{path}: no rows")
        missing = [c for c in columns if c not in have]
        if missing:
            raise DepthmuxError(f"{path}: no column(s) {missing} (the file has {have})")
        return {c: list(table[c]) for c in columns}


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_text(value) -> str:
    """A label cell as written: ``1``, ``1.0`` (pandas reads integer columns with gaps as floats) -> ``"1"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _texts(path, table: dict[str, list], text_columns: list[str]) -> list[Text]:
    """Each row's text (a string, or a pair); a blank or over-long text is one line naming its row."""
    texts: list[Text] = []
    for row in range(len(table[text_columns[0]])):
        parts = []
        for c in text_columns:
            cell = table[c][row]
            text = "" if _is_missing(cell) else str(cell).strip()
            if is_blank(text):
                raise DepthmuxError(f"{path}: row {row + 1} has an empty text (column {c!r})")
            if len(text) > MAX_TEXT_CHARS:
                raise DepthmuxError(
                    f"{path}: row {row + 1}: a text of {len(text)} characters, over the {MAX_TEXT_CHARS}-character "
                    "limit for one input"
                )
            parts.append(text)
        texts.append(parts[0] if len(parts) == 1 else (parts[0], parts[1]))
    return texts


def read_texts(path: str | os.PathLike, text_columns: list[str]) -> list[Text]:
    """The texts of every row of a data file (no labels needed: e.g. inputs to time)."""
    require(
        isinstance(text_columns, list) and len(text_columns) in (1, 2),
        f"--text-column takes one column (single texts) or two (pairs), got {len(text_columns)}: {text_columns}",
    )
    return _texts(path, read_table(path, text_columns), text_columns)


def read_labelled_file(
    path: str | os.PathLike, text_columns: list[str], label_column: str
) -> tuple[list[Text], list[str]]:
    """Texts (a string, or a pair) and label values (as text) of every row of a data file."""
    table = read_table(path, [*text_columns, label_column])
    labels: list[str] = []
    for row, value in enumerate(table[label_column]):
        if _is_missing(value) or _label_text(value) == "":
            raise DepthmuxError(f"{path}: row {row + 1} has no label (column {label_column!r})")
        labels.append(_label_text(value))
    return _texts(path, table, text_columns), labels


def label_order(values: set[str]) -> list[str]:
    """Label names in a stable order: numerically if every value is an integer, else alphabetically."""
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


def load_user_file(
    path: str | os.PathLike,
    text_columns: list[str],
    label_column: str,
    label_names: list[str],
    split: str = "dev",
    name: str | None = None,
) -> ClassificationDataset:
    """One labelled file whose labels must be among ``label_names`` (a trained model's labels), e.g. to
    evaluate a checkpoint on the user's dev file."""
    require(
        isinstance(text_columns, list) and len(text_columns) in (1, 2),
        f"--text-column takes one column (single texts) or two (pairs), got {len(text_columns)}: {text_columns}",
    )
    texts, values = read_labelled_file(path, text_columns, label_column)
    unseen = sorted(set(values) - set(label_names))
    if unseen:
        raise DepthmuxError(f"{path}: label(s) {unseen[:5]} are not among the model's labels {label_names[:10]}")
    labels = [label_names.index(v) for v in values]
    return ClassificationDataset(name or Path(path).stem, split, texts, labels, list(label_names))


def load_user_splits(spec: UserDataSpec) -> dict[str, ClassificationDataset]:
    """``{"train", "validation", "dev"}`` from the user's files (see the module docstring)."""
    spec.validate()
    train_texts, train_values = read_labelled_file(spec.train_file, spec.text_columns, spec.label_column)
    label_names = label_order(set(train_values))
    require(
        len(label_names) >= 2,
        f"{spec.train_file}: every row has label {label_names[0]!r}; a classifier needs at least two labels",
    )
    notes: list[str] = []

    def dataset(path, split, texts, values) -> ClassificationDataset:
        unseen = sorted(set(values) - set(label_names))
        if unseen:
            raise DepthmuxError(
                f"{path}: label(s) {unseen[:5]} never appear in the train file {spec.train_file} "
                f"(train labels: {label_names[:10]})"
            )
        return ClassificationDataset(
            spec.name, split, texts, [label_names.index(v) for v in values], label_names, notes
        )

    train = dataset(spec.train_file, "train", train_texts, train_values)
    if spec.val_file is not None:
        validation = dataset(
            spec.val_file, "validation", *read_labelled_file(spec.val_file, spec.text_columns, spec.label_column)
        )
        notes.append(f"validation = {spec.val_file}, used for model selection")
    else:
        require(len(train) >= 2, f"{spec.train_file}: one row cannot be split into train and validation")
        rest, held = split_indices(len(train), spec.val_fraction, spec.seed)
        train, validation = train.subset(rest), train.subset(held, "validation")
        notes.append(f"validation = seeded {spec.val_fraction:.0%} of {spec.train_file}, used for model selection")
    dev = dataset(spec.dev_file, "dev", *read_labelled_file(spec.dev_file, spec.text_columns, spec.label_column))
    return {"train": train, "validation": validation, "dev": dev}
