"""``depthmux mux predict``: a trained RevMUX (or teacher) checkpoint over a user's file (SPEC 1.1).

::

    cfg = MuxPredictConfig("runs/mux/n2/best", "reviews.parquet", "scored.parquet", ["text"])
    summary = predict_file(cfg)

CSV, TSV, JSON lines or Parquet in; the same format out, every input column kept as read, plus the
predicted label (``predicted_label``) and one probability column per class (``prob_<label>``).

* **Grouped**: the file is read in chunks whose size is a multiple of the batch, and each batch goes
  through the classifier as :meth:`FrozenBackboneClassifier.predict` does (consecutive N rows share a
  pass; the last group of the file is completed with dummies), so the labels equal
  ``load_classifier(dir).predict(texts, batch_size)``.
* **Memory independent of the file's size**: one chunk in memory at a time (``chunk_rows`` rows);
  CSV/TSV through :mod:`csv` (exact line numbers, quoted newlines included), JSON lines line by line,
  Parquet by record batches.
* **Bad rows first**: a pass over the text column(s) before any inference checks every row (a blank
  or missing text, a malformed line, an over-long text) and counts them for the progress bar; the
  error is one line naming the file and the line (Parquet: the row).
* **Atomic**: the output is written to a hidden temporary file beside ``out`` and renamed at the
  end; an existing ``out`` is refused unless ``overwrite``.

Length: one chunked pass with a reader and a writer per format (CSV/TSV, JSON lines, Parquet) that share
the :class:`Chunk` and the row checks; split up, each module would hold a few dozen lines of one idea.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from depthmux.data.classification import MAX_TEXT_CHARS, Text
from depthmux.errors import DepthmuxError, require
from depthmux.multiplexing import load_classifier
from depthmux.multiplexing.model import whole_groups
from depthmux.utils.checks import check_device, check_int
from depthmux.utils.text import is_blank

#: Extension -> format name. ``.json`` is not here: a JSON array cannot be read in chunks.
PREDICT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
csv.field_size_limit(MAX_TEXT_CHARS * 8)  # a quoted cell may be long; the text limit is checked per cell


@dataclass
class MuxPredictConfig:
    """Options of ``depthmux mux predict``.

    Attributes:
        checkpoint: a folder written by ``save_pretrained`` (multiplexed or teacher).
        input, out: the data file and where to write the scored copy (same format, by extension).
        text_columns: one column (single texts) or two (pairs).
        overwrite: replace an existing ``out`` (refused otherwise).
        batch_size: inputs per forward (a multiple of N is used, as ``predict`` does).
        chunk_rows: rows read and written at a time (rounded up to a multiple of the batch).
        label_column, prob_prefix: names of the added columns.
        device: where the model runs.
    """

    checkpoint: str
    input: str
    out: str
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    overwrite: bool = False
    batch_size: int = 64
    chunk_rows: int = 4096
    label_column: str = "predicted_label"
    prob_prefix: str = "prob_"
    device: str = "cpu"

    def validate(self) -> MuxPredictConfig:
        require(
            isinstance(self.text_columns, list) and len(self.text_columns) in (1, 2),
            f"--text-column takes one column (single texts) or two (pairs), got {self.text_columns}",
        )
        require(all(isinstance(c, str) and c for c in self.text_columns), "--text-column names must not be empty")
        check_int("--batch-size", self.batch_size, 1)
        check_int("--chunk-rows", self.chunk_rows, 1)
        check_device("--device", self.device)
        fmt = predict_format(self.input)
        require(
            predict_format(self.out) == fmt,
            f"--out {self.out} must have the input's format ({fmt}: {Path(self.input).suffix})",
        )
        src, dst = Path(self.input), Path(self.out)
        require(src.is_file(), f"input file not found: {src}")
        require(src.stat().st_size > 0, f"{src}: file is empty")
        require(dst.resolve() != src.resolve(), "--out must differ from --input (the input is read while writing)")
        require(dst.parent.is_dir(), f"--out folder does not exist: {dst.parent}")
        require(
            self.overwrite or not dst.exists(), f"{dst} exists: choose another --out or pass --overwrite to replace it"
        )
        require(not dst.is_dir(), f"--out {dst} is a folder")
        return self


@dataclass
class PredictSummary:
    out: str
    rows: int
    seconds: float
    label_counts: dict[str, int]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf

    def as_dict(self) -> dict:
        return {**self.__dict__, "rows_per_s": self.rows_per_s}


def predict_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in PREDICT_FORMATS:
        raise DepthmuxError(
            f"{path}: unknown data file extension {suffix or '(none)'!r}: use one of {', '.join(PREDICT_FORMATS)}"
        )
    return PREDICT_FORMATS[suffix]


@dataclass
class Chunk:
    """Rows as read (``payload``: lists for CSV/TSV, dicts for JSONL, an Arrow table for Parquet), their
    texts and where each row is in the file ("line 7", "row 7")."""

    payload: object
    texts: list[Text]
    where: list[str]


def _cell_text(path, where: str, column: str, cell) -> str:
    """One text cell, checked: a missing, blank or over-long text is one line naming the row."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        raise DepthmuxError(f"{path}: {where} has no text in column {column!r}")
    if not isinstance(cell, str):
        if isinstance(cell, dict | list):
            raise DepthmuxError(f"{path}: {where}: column {column!r} holds a {type(cell).__name__}, not a text")
        cell = str(cell)
    if is_blank(cell):
        raise DepthmuxError(f"{path}: {where} has an empty text (column {column!r})")
    if len(cell) > MAX_TEXT_CHARS:
        raise DepthmuxError(
            f"{path}: {where}: a text of {len(cell)} characters, over the {MAX_TEXT_CHARS}-character limit"
        )
    return cell


class _Reader(ABC):
    """A data file read in chunks of exactly ``rows`` rows (the last may be shorter); one subclass per
    format implements :meth:`columns` and :meth:`chunks`."""

    def __init__(self, path: Path, text_columns: list[str]) -> None:
        self.path, self.text_columns = path, text_columns

    @abstractmethod
    def columns(self) -> list[str]:
        """The file's column names."""

    @abstractmethod
    def chunks(self, rows: int) -> Iterator[Chunk]:
        """The rows, ``rows`` at a time."""

    def text_of(self, where: str, cells: list) -> Text:
        parts = [_cell_text(self.path, where, c, v) for c, v in zip(self.text_columns, cells, strict=True)]
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])

    def check_columns(self, added: list[str]) -> None:
        have = self.columns()
        missing = [c for c in self.text_columns if c not in have]
        if missing:
            raise DepthmuxError(f"{self.path}: no column(s) {missing} (the file has {have[:20]})")
        clash = [c for c in added if c in have]
        if clash:
            raise DepthmuxError(f"{self.path}: already has column(s) {clash} that predict would add")


class _CSVReader(_Reader):
    def __init__(self, path: Path, text_columns: list[str], delimiter: str) -> None:
        super().__init__(path, text_columns)
        self.delimiter = delimiter

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        """(first line of the row, its cells), header first; decoding and quoting errors name the line."""
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            line = 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except UnicodeDecodeError:
                    raise DepthmuxError(f"{self.path}: line {reader.line_num + 1} is not UTF-8 text") from None
                except csv.Error as e:
                    raise DepthmuxError(f"{self.path}: line {reader.line_num}: {e}") from None
                yield line, row
                line = reader.line_num + 1

    def columns(self) -> list[str]:
        for _, header in self._rows():
            return header
        raise DepthmuxError(f"{self.path}: file is empty")

    def chunks(self, rows: int) -> Iterator[Chunk]:
        rows_iter = self._rows()
        _, header = next(rows_iter)
        index = [header.index(c) for c in self.text_columns]
        chunk = Chunk([], [], [])
        for line, row in rows_iter:
            if not row:  # a blank line: csv gives [], nothing to score
                continue
            where = f"line {line}"
            if len(row) != len(header):
                raise DepthmuxError(f"{self.path}: {where} has {len(row)} field(s), the header has {len(header)}")
            chunk.payload.append(row)
            chunk.texts.append(self.text_of(where, [row[i] for i in index]))
            chunk.where.append(where)
            if len(chunk.texts) == rows:
                yield chunk
                chunk = Chunk([], [], [])
        if chunk.texts:
            yield chunk


class _JSONLReader(_Reader):
    def _objects(self) -> Iterator[tuple[int, dict]]:
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DepthmuxError(f"{self.path}: line {number} is not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DepthmuxError(f"{self.path}: line {number} is not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DepthmuxError(f"{self.path}: line {number} is not a JSON object")
                yield number, obj

    def columns(self) -> list[str]:
        for _, obj in self._objects():
            return list(obj)
        raise DepthmuxError(f"{self.path}: no rows")

    def check_columns(self, added: list[str]) -> None:
        """JSON lines have no header: each row is checked as it is read (see :meth:`chunks`)."""
        self.added = added

    def chunks(self, rows: int) -> Iterator[Chunk]:
        chunk = Chunk([], [], [])
        for number, obj in self._objects():
            where = f"line {number}"
            missing = [c for c in self.text_columns if c not in obj]
            if missing:
                raise DepthmuxError(f"{self.path}: {where} has no field(s) {missing}")
            clash = [c for c in self.added if c in obj]
            if clash:
                raise DepthmuxError(f"{self.path}: {where} already has field(s) {clash} that predict would add")
            chunk.payload.append(obj)
            chunk.texts.append(self.text_of(where, [obj[c] for c in self.text_columns]))
            chunk.where.append(where)
            if len(chunk.texts) == rows:
                yield chunk
                chunk = Chunk([], [], [])
        if chunk.texts:
            yield chunk


class _ParquetReader(_Reader):
    def _file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises ArrowInvalid and friends for a file that is not Parquet
            raise DepthmuxError(f"{self.path}: cannot read it as Parquet: {str(e).splitlines()[0][:200]}") from None

    def columns(self) -> list[str]:
        return list(self._file().schema_arrow.names)

    def chunks(self, rows: int) -> Iterator[Chunk]:
        import pyarrow as pa

        pending: list = []
        have, start = 0, 0

        def emit(table) -> Chunk:
            nonlocal start
            where = [f"row {start + i + 1}" for i in range(table.num_rows)]
            cols = [table.column(c).to_pylist() for c in self.text_columns]
            texts = [self.text_of(w, [col[i] for col in cols]) for i, w in enumerate(where)]
            start += table.num_rows
            return Chunk(table, texts, where)

        for batch in self._file().iter_batches(batch_size=rows):
            pending.append(batch)
            have += batch.num_rows
            while have >= rows:  # re-cut so every chunk but the last has exactly ``rows`` rows
                table = pa.Table.from_batches(pending)
                yield emit(table.slice(0, rows))
                rest = table.slice(rows)
                pending, have = rest.to_batches(), rest.num_rows
        if have:
            yield emit(pa.Table.from_batches(pending))


def _reader(path: Path, text_columns: list[str]) -> _Reader:
    fmt = predict_format(path)
    if fmt in ("csv", "tsv"):
        return _CSVReader(path, text_columns, "," if fmt == "csv" else "\t")
    if fmt == "jsonl":
        return _JSONLReader(path, text_columns)
    return _ParquetReader(path, text_columns)


class _Writer:
    """Writes chunks with the added columns into ``tmp`` (renamed by the caller)."""

    def __init__(self, fmt: str, tmp: Path, columns: list[str], added: list[str]) -> None:
        self.fmt, self.tmp, self.columns, self.added = fmt, tmp, columns, added
        self.file = None
        self.parquet = None
        if fmt in ("csv", "tsv"):
            self.file = open(tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self.csv = csv.writer(self.file, delimiter="," if fmt == "csv" else "\t")
            self.csv.writerow([*columns, *added])
        elif fmt == "jsonl":
            self.file = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, chunk: Chunk, labels: list[str], probs: list[list[float]]) -> None:
        if self.fmt in ("csv", "tsv"):
            for row, label, p in zip(chunk.payload, labels, probs, strict=True):
                self.csv.writerow([*row, label, *(f"{x:.6g}" for x in p)])
        elif self.fmt == "jsonl":
            for obj, label, p in zip(chunk.payload, labels, probs, strict=True):
                out = {**obj, self.added[0]: label, **dict(zip(self.added[1:], p, strict=True))}
                self.file.write(json.dumps(out, ensure_ascii=False) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = chunk.payload.append_column(self.added[0], pa.array(labels, pa.string()))
            for k, name in enumerate(self.added[1:]):
                table = table.append_column(name, pa.array([p[k] for p in probs], pa.float64()))
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.parquet is not None:
            self.parquet.close()


def predict_file(cfg: MuxPredictConfig, progress: bool = True) -> PredictSummary:
    """Score every row of ``cfg.input`` into ``cfg.out`` (see the module docstring)."""
    cfg.validate()
    src, dst = Path(cfg.input), Path(cfg.out)
    fmt = predict_format(src)
    reader = _reader(src, cfg.text_columns)
    model = load_classifier(cfg.checkpoint).place(cfg.device)
    model.eval()
    names = model.config.label_names
    added = [cfg.label_column, *(f"{cfg.prob_prefix}{name}" for name in names)]
    require(len(set(added)) == len(added), f"the added column names repeat: {added}")
    reader.check_columns(added)
    batch = whole_groups(cfg.batch_size, model.group_size)
    rows = -(-cfg.chunk_rows // batch) * batch
    total = sum(len(c.texts) for c in reader.chunks(rows))  # the check pass: every bad row before inference
    require(total > 0, f"{src}: no rows")

    from tqdm.auto import tqdm

    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    writer = _Writer(fmt, tmp, reader.columns() if fmt != "jsonl" else [], added)
    counts = dict.fromkeys(names, 0)
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="row", disable=not progress, desc=src.name) as bar:
            for chunk in reader.chunks(rows):
                labels, probs = [], []
                for i in range(0, len(chunk.texts), batch):
                    try:
                        got = model.classify(chunk.texts[i : i + batch])
                    except DepthmuxError as e:  # "text k is too long: ..." -> name the row in the file
                        k = int(str(e).split()[1]) if str(e).startswith("text ") else 0
                        raise DepthmuxError(f"{src}: {chunk.where[i + k]}: {e}") from None
                    labels += got[0]
                    probs += got[1]
                writer.write(chunk, labels, probs)
                for label in labels:
                    counts[label] += 1
                bar.update(len(labels))
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return PredictSummary(str(dst), total, time.perf_counter() - start, counts)
