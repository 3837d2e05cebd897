"""``depthmux mux predict --ray``: a RevMUX (or teacher) checkpoint over a Parquet or CSV file on Ray Data.

::

    cfg = RayPredictConfig("runs/mux/n2/best", "reviews.parquet", "scored/", ["text"], actors=2)
    summary = predict_with_ray(cfg)

Read (``ray.data.read_parquet`` / ``read_csv``) -> re-cut into blocks of exactly ``B`` rows in file
order -> ``map_batches`` on a pool of ``actors`` actors, each holding the classifier -> Parquet files in
the ``out`` folder (one file per block, in order; read them back with ``pyarrow.parquet.read_table``).
The columns added are those of ``mux predict`` (``predicted_label``, ``prob_<label>``).

**Same predictions as the single-process command.** RevMUX mixes the N inputs of a group, so a row's
prediction depends on which rows share its group (and the padding of its batch). The single-process
command takes batches ``[kB, (k+1)B)`` of the file; here the streaming repartition with
``strict=True`` and ``preserve_order`` gives blocks of exactly ``block_rows`` rows (a multiple of
``B``) in file order; each block is one actor call (``map_batches(batch_size=None)``), which scores it
in batches of ``B`` from its first row: the same batches, so the same outputs bit for bit, in the same
order (tested). The last batch is completed with dummies by the classifier, as there. Not used, as
they reorder rows: ``map_batches(batch_size=B)`` (its output batches of one call can come back out of
order) and ``write_parquet(min_rows_per_file=...)``.

**Cluster.** ``address`` (or ``RAY_ADDRESS``) joins a running cluster (``ray start --head``); otherwise a
local Ray is started on 127.0.0.1 with ``num_cpus`` CPUs. What scales: the actors (one model copy
each, ``cpus_per_actor`` threads) and the reading (one read task per file / row group). What does not:
one file is read by one task, and a single small file gives little parallel reading.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from depthmux.errors import DepthmuxError, require
from depthmux.recipes.mux_predict import PredictSummary
from depthmux.utils.checks import check_float, check_int
from depthmux.utils.ray_cluster import start_ray

#: Input formats Ray Data reads here (extension -> format).
RAY_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}


@dataclass
class RayPredictConfig:
    """Options of ``depthmux mux predict --ray``.

    Attributes:
        checkpoint: a folder written by ``save_pretrained`` (multiplexed or teacher).
        input: a Parquet, CSV or TSV file (or a folder of Parquet files).
        out: a folder for the scored Parquet files (refused if it holds anything, unless ``overwrite``).
        text_columns: one column (single texts) or two (pairs).
        batch_size: inputs per forward, rounded up to a multiple of N as ``mux predict`` does; use
            the same value there to compare outputs.
        actors: size of the actor pool (each holds one copy of the classifier).
        cpus_per_actor: CPUs Ray reserves per actor (its torch threads: the value rounded, at least 1);
            the actors must leave CPUs for the read tasks (checked: one line otherwise).
        address: a Ray cluster to join (``auto``, ``ray://host:10001``, ...); None: ``RAY_ADDRESS`` or a
            new local instance.
        num_cpus: CPUs of a new local instance (None: all of the machine's).
        block_rows: rows per block (rounded up to a multiple of the batch): what one actor call
            scores and one output file holds.
    """

    checkpoint: str
    input: str
    out: str
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    batch_size: int = 64
    actors: int = 1
    cpus_per_actor: float = 1.0
    overwrite: bool = False
    address: str | None = None
    num_cpus: int | None = None
    block_rows: int = 8192
    label_column: str = "predicted_label"
    prob_prefix: str = "prob_"

    def validate(self) -> RayPredictConfig:
        """Raise a one-line :class:`DepthmuxError` for the first invalid option; return self."""
        require(
            isinstance(self.text_columns, list) and len(self.text_columns) in (1, 2),
            f"--text-column takes one column (single texts) or two (pairs), got {self.text_columns}",
        )
        require(all(isinstance(c, str) and c for c in self.text_columns), "--text-column names must not be empty")
        check_int("--batch-size", self.batch_size, 1)
        check_int("--actors", self.actors, 1)
        check_float("--cpus-per-actor", self.cpus_per_actor, 0.0, low_open=True)
        check_int("--num-cpus", self.num_cpus, 1, allow_none=True)
        check_int("block_rows", self.block_rows, 1)
        src, dst = Path(self.input), Path(self.out)
        require(src.exists(), f"input not found: {src}")
        ray_format(src)
        require(not dst.is_file(), f"--out {dst} is a file: with --ray it is a folder of Parquet files")
        require(
            self.overwrite or not (dst.is_dir() and any(dst.iterdir())),
            f"{dst} is not empty: choose another --out or pass --overwrite to replace it",
        )
        require(dst.resolve() != src.resolve(), "--out must differ from --input")
        return self


@dataclass
class RayPredictSummary(PredictSummary):
    """:class:`~depthmux.recipes.mux_predict.PredictSummary` plus the number of actors."""

    actors: int = 1


def ray_format(path: str | os.PathLike) -> str:
    """``parquet``, ``csv`` or ``tsv`` by extension (a folder is read as Parquet files)."""
    p = Path(path)
    if p.is_dir():
        return "parquet"
    suffix = p.suffix.lower()
    if suffix not in RAY_FORMATS:
        raise DepthmuxError(
            f"{p}: --ray reads {', '.join(RAY_FORMATS)} files or a folder of Parquet files, not {suffix or '(none)'!r}"
        )
    return RAY_FORMATS[suffix]


class Scorer:
    """The actor's state and block function: ``pyarrow.Table`` of one block -> the same table with the
    label and probability columns added, scored in batches of ``batch`` rows from its first row (the
    classifier is loaded once per actor)."""

    def __init__(self, checkpoint: str, text_columns: list[str], added: list[str], threads: int, batch: int) -> None:
        import torch

        from depthmux.multiplexing import load_classifier

        torch.set_num_threads(threads)
        self.model = load_classifier(checkpoint).place("cpu").eval()
        self.text_columns, self.added, self.batch = text_columns, added, batch

    def __call__(self, table):
        import pyarrow as pa

        columns = [table.column(c).to_pylist() for c in self.text_columns]
        texts = [_text(cells, self.text_columns) for cells in zip(*columns, strict=True)]
        labels, probs = [], []
        for i in range(0, len(texts), self.batch):
            a, b = self.model.classify(texts[i : i + self.batch])
            labels += a
            probs += b
        table = table.append_column(self.added[0], pa.array(labels, pa.string()))
        for k, name in enumerate(self.added[1:]):
            table = table.append_column(name, pa.array([p[k] for p in probs], pa.float64()))
        return table


def _text(cells: tuple, columns: list[str]):
    for column, cell in zip(columns, cells, strict=True):
        if not isinstance(cell, str) or not cell.strip():
            raise DepthmuxError(f"a row has no text in column {column!r} (got {cell!r})")
    return cells[0] if len(cells) == 1 else (cells[0], cells[1])


def _read(path: Path, fmt: str):
    import ray.data

    if fmt == "parquet":
        return ray.data.read_parquet(str(path))
    from pyarrow import csv as pacsv

    return ray.data.read_csv(str(path), parse_options=pacsv.ParseOptions(delimiter="," if fmt == "csv" else "\t"))


def _user_error(e: BaseException) -> str | None:
    """The message of the :class:`DepthmuxError` raised inside a Ray task or actor, if that is what failed
    (Ray re-raises it as a ``RayTaskError(UserCodeException)`` whose text holds the remote traceback)."""
    for line in str(e).splitlines():
        if line.startswith(_REMOTE_ERROR):
            return line[len(_REMOTE_ERROR) :].strip()
    return None


_REMOTE_ERROR = f"{DepthmuxError.__module__}.{DepthmuxError.__qualname__}: "


def predict_with_ray(cfg: RayPredictConfig) -> RayPredictSummary:
    """Score every row of ``cfg.input`` into Parquet files in ``cfg.out`` on Ray Data (see the module docstring)."""
    cfg.validate()
    import pyarrow.parquet as pq
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from depthmux.multiplexing import load_classifier
    from depthmux.multiplexing.model import whole_groups

    src, dst = Path(cfg.input), Path(cfg.out)
    model = load_classifier(cfg.checkpoint)  # a bad checkpoint fails here, before any Ray work
    names, batch = model.config.label_names, whole_groups(cfg.batch_size, model.group_size)
    del model
    added = [cfg.label_column, *(f"{cfg.prob_prefix}{name}" for name in names)]
    start_ray(cfg.address, cfg.num_cpus)
    cpus = float(ray.cluster_resources().get("CPU", 0))
    require(
        cfg.actors * cfg.cpus_per_actor < cpus,
        f"--actors {cfg.actors} x --cpus-per-actor {cfg.cpus_per_actor:g} would take all {cpus:g} CPUs of the Ray "
        "cluster and leave none to read the file: use fewer actors or a fractional --cpus-per-actor",
    )
    # before the read: a Dataset copies the context when it is made, and the ones derived from it copy its copy
    DataContext.get_current().execution_options.preserve_order = True
    ds = _read(src, ray_format(src))
    have = list(ds.schema().names)
    missing = [c for c in cfg.text_columns if c not in have]
    require(not missing, f"{src}: no column(s) {missing} (the file has {have[:20]})")
    clash = [c for c in added if c in have]
    require(not clash, f"{src}: already has column(s) {clash} that predict would add")

    threads = max(1, round(cfg.cpus_per_actor))
    block = -(-cfg.block_rows // batch) * batch
    scored = ds.repartition(target_num_rows_per_block=block, strict=True).map_batches(
        Scorer,
        fn_constructor_args=(str(Path(cfg.checkpoint).resolve()), cfg.text_columns, added, threads, batch),
        batch_size=None,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor,
    )
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    try:
        scored.write_parquet(str(tmp))
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        user = _user_error(e)
        if user:
            raise DepthmuxError(f"{src}: {user}") from None
        if isinstance(e, ray.exceptions.RayError):
            raise DepthmuxError(f"Ray failed: {str(e).strip().splitlines()[-1][:300]}") from None
        raise
    seconds = time.perf_counter() - start
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    labels = pq.read_table(dst, columns=[cfg.label_column]).column(0).to_pylist()
    counts = dict.fromkeys(names, 0)
    for label in labels:
        counts[label] += 1
    return RayPredictSummary(str(dst), len(labels), seconds, counts, actors=cfg.actors)
