"""One run's output folder: the layout shared by ``depthmux mux train`` and ``depthmux lm train``.

::

    <root>/.lock                        exclusive lock (fcntl.flock) while a run writes here
    <root>/<name>.json                  configs, written atomically (temp file + os.replace)
    <root>/log.jsonl                    one JSON record per line; a torn last line is ignored
    <root>/checkpoints/step-NNNNNN/     atomic checkpoint folders, the newest ``keep`` kept

A run opens its folder with ``with RunFolder(out).lock():`` (a second run on the same folder fails
with one line), removes what interrupted saves left (:meth:`RunFolder.clean_stale_tmp`), and on
resume takes the newest checkpoint that loads (:meth:`RunFolder.latest_checkpoint`; a corrupt
newer one is skipped with a warning) and cuts the log back to that checkpoint's step
(:meth:`RunFolder.truncate_log`), so the history equals an uninterrupted run's.

Whose folder it is (the output-folder rule, one place for every command that writes a run folder:
``mux train/run/sweep``, ``lm train``, ``ee train``). A run writes the marker ``<root>/.depthmux-run``
as it takes the lock. An output folder is accepted only if it is

- new (it is created), or empty (an empty ``.lock`` left by an older version counts as empty);
- a depthmux run folder: it holds the marker, or sits one or two levels inside a folder that does
  (the cells of a mux experiment or sweep: what a run of ours holds is ours);
- a run folder of an older version (before the marker): one of our configs (``train_config.json``
  with a ``"train"`` object, ``experiment.json`` or ``sweep.json`` with the keys those runs write)
  AND the trace of a started run next to it: ``log.jsonl``, a ``checkpoints/`` folder holding only
  ``step-NNNNNN`` folders (and our hidden temporary entries), or a saved ``teacher/`` (a mux
  experiment) or ``<dataset>-train<size>/teacher*`` (a sweep). Such a folder gets the marker on its
  next run. An older run that stopped before any of these is refused like a user's folder (delete it
  or choose another ``--out``): a config file alone is not proof enough to clean a folder.

Anything else is refused with one line (:meth:`RunFolder.check_writable`, :func:`check_out_folder`)
before anything is created, probed or cleaned in it, so nothing of a user's is ever touched. An empty
``--out ''`` is refused by :func:`out_path` (the CLIs' ``--out`` parser): it would name the current
directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from safetensors import SafetensorError

from depthmux.errors import DepthmuxError
from depthmux.utils.checkpoint import atomic_directory, atomic_write_text, recover_directory

T = TypeVar("T")

STEP_DIR = re.compile(r"^step-(\d+)$")
MARKER = ".depthmux-run"
"""The file a run writes at the top of its folder when it starts (see the module docstring)."""
MARKER_TEXT = "a depthmux run folder: depthmux writes and cleans here (checkpoints, logs, results)\n"
LEGACY_CONFIGS = {
    "train_config.json": ("train",),
    "experiment.json": ("task", "ns", "prefill_layers", "mixers", "train"),
    "sweep.json": ("experiment", "lambdas", "seeds"),
}
"""Older run folders (no marker): the config file of each kind of run and the keys it always holds."""
REFUSED = "holds files that are not a depthmux run; choose a new or empty --out"
LOAD_ERRORS = (DepthmuxError, OSError, ValueError, KeyError, RuntimeError, SafetensorError)
"""What a corrupt checkpoint raises while loading (missing files, bad JSON, bad tensors, shape mismatch)."""


def out_path(text: str | os.PathLike) -> Path:
    """A command's ``--out`` value as a path; an empty one is refused (``Path("")`` is the current
    directory, so ``--out ''`` would write there). The CLIs use it as the option's parser."""
    if str(text).strip() == "":
        raise DepthmuxError("an empty --out names the current directory; give the run folder's path")
    return Path(text)


def _legacy_run(root: Path) -> bool:
    """Whether ``root`` (no marker) has the structure of a run folder of an older depthmux."""
    config = next((name for name in LEGACY_CONFIGS if (root / name).is_file()), None)
    if config is None:
        return False
    try:
        obj = json.loads((root / config).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(obj, dict) or not all(k in obj for k in LEGACY_CONFIGS[config]):
        return False
    if (root / "log.jsonl").is_file() or (root / "teacher").is_dir():
        return True
    ckpts = root / "checkpoints"
    if ckpts.is_dir() and not ckpts.is_symlink():
        entries = list(ckpts.iterdir())
        ours = [p for p in entries if (STEP_DIR.match(p.name) and p.is_dir()) or p.name.startswith(".")]
        if entries and len(ours) == len(entries) and any(STEP_DIR.match(p.name) for p in entries):
            return True
    return config == "sweep.json" and any(root.glob("*-train*/teacher*"))


def check_out_folder(root: str | os.PathLike) -> None:
    """The output-folder rule (module docstring): one line unless ``root`` is new, empty, a depthmux
    run folder (its marker) or an older version's run folder. Reads only: nothing is created, probed
    or cleaned here."""
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return
    if not root.is_dir():
        raise DepthmuxError(f"--out {root} is not a folder (a file is there); choose a new or empty --out")
    try:
        entries = list(root.iterdir())
    except OSError as e:
        raise DepthmuxError(f"cannot read the folder {root}: {e.strerror or e}") from None
    lock = root / ".lock"
    leftovers = [p for p in entries if not (p == lock and p.is_file() and not p.is_symlink() and _size(p) == 0)]
    if not leftovers:
        return
    if any(_marked(d) for d in (root, root.parent, root.parent.parent)):
        return
    if _legacy_run(root):
        return
    raise DepthmuxError(f"{root} {REFUSED}")


def _marked(folder: Path) -> bool:
    marker = folder / MARKER
    return marker.is_file() and not marker.is_symlink()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


class RunFolder:
    """One run's output folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    @property
    def checkpoint_root(self) -> Path:
        return self.root / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.root / "log.jsonl"

    # ---------------------------------------------------------------------------------- lock

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunFolder]:
        """Hold ``<root>/.lock`` exclusively for the ``with`` block (released on exit or process death);
        the folder must pass :meth:`check_writable` first, and gets the run marker."""
        self.check_writable()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DepthmuxError(
                f"{self.root} is in use by another run (pid {holder}); wait for it or use another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            if not (self.root / MARKER).is_file():
                atomic_write_text(self.root / MARKER, MARKER_TEXT)
            yield self
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def check_writable(self) -> None:
        """Refuse a folder that is not ours (:func:`check_out_folder`), then create it and check a file
        can be written there, before any expensive work."""
        check_out_folder(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}.tmp"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise DepthmuxError(f"cannot write to {self.root}: {e.strerror or e}") from None

    def clean_stale_tmp(self) -> list[Path]:
        """Remove what interrupted atomic saves left (``.*.tmp`` files and folders, a previous version
        parked aside whose replacement is in place) and put back a version parked aside whose
        replacement never arrived. Call it under :meth:`lock`. Returns the removed paths."""
        removed = []
        for folder in (self.root, self.checkpoint_root):
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.name.startswith(".") and p.name.endswith(".old") and p.is_dir():
                    target = p.with_name(p.name[1 : -len(".old")])
                    if target.exists():
                        removed.append(p)
                    recover_directory(target)
                elif p.name.startswith(".") and p.name.endswith(".tmp"):
                    removed.append(p)
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
        return removed

    def holds_run(self) -> bool:
        """Whether a run has started here (a config, a log or a checkpoint): a new run must not mix in."""
        return any(self.root.glob("*.json")) or self.log_path.exists() or bool(self.checkpoints())

    # ---------------------------------------------------------------------------------- JSON

    def _json_path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def write_json(self, name: str, obj: dict) -> None:
        """Write ``<root>/<name>.json`` atomically."""
        atomic_write_text(self._json_path(name), json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def has_json(self, name: str) -> bool:
        return self._json_path(name).is_file()

    def read_json(self, name: str) -> dict:
        """``<root>/<name>.json`` as a dict; one-line error if missing, truncated or not an object."""
        path = self._json_path(name)
        if not path.is_file():
            raise DepthmuxError(f"{path} is missing")
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DepthmuxError(f"{path} is not valid JSON (truncated?): {str(e).splitlines()[0]}") from None
        if not isinstance(obj, dict):
            raise DepthmuxError(f"{path} does not hold a JSON object")
        return obj

    def check_matches(self, name: str, given: dict, keys: Iterable[str] | None = None) -> None:
        """Refuse a resume whose settings differ from the stored ``<name>.json``.

        Compares ``given`` with the stored object on ``keys`` (all keys of ``given`` if None; a
        dotted key such as ``"train.lr"`` reads nested objects). Tuples and lists compare equal.
        """
        stored = self.read_json(name)
        missing = object()

        def get(obj, key):
            for part in key.split("."):
                if not isinstance(obj, dict) or part not in obj:
                    return missing
                obj = obj[part]
            return json.loads(json.dumps(obj))

        diffs = []
        for key in list(keys) if keys is not None else list(given):
            a, b = get(stored, key), get(given, key)
            if a is not b and a != b:
                shown = ["(none)" if v is missing else v for v in (a, b)]
                diffs.append(f"{key.split('.')[-1]} (stored {shown[0]}, given {shown[1]})")
        if diffs:
            raise DepthmuxError(
                f"--resume: {self.root} was started with a different "
                + ", ".join(diffs)
                + "; resume with the stored settings or use a new --out"
            )

    # ----------------------------------------------------------------------------------- log

    def append_log(self, record: dict) -> None:
        """Append one JSON record as a line of ``log.jsonl`` (flushed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_log(self) -> list[dict]:
        """The records of ``log.jsonl`` ([] if absent). A torn or corrupt last line (a write cut by a
        kill) is skipped; a corrupt line before the last is a one-line error."""
        if not self.log_path.is_file():
            return []
        lines = self.log_path.read_text(errors="replace").split("\n")
        records = []
        body = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
        for pos, (i, ln) in enumerate(body):
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                if pos == len(body) - 1:  # torn by a kill mid-write
                    break
                raise DepthmuxError(f"{self.log_path}: line {i} is not a JSON record")
            records.append(rec)
        return records

    def truncate_log(self, keep: Callable[[dict], bool]) -> None:
        """Rewrite ``log.jsonl`` atomically with the records where ``keep(record)`` (drops a torn line)."""
        kept = [r for r in self.read_log() if keep(r)]
        atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in kept))

    # --------------------------------------------------------------------------- checkpoints

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints ``[(step, folder)]`` sorted by step (temp folders are never listed)."""
        if not self.checkpoint_root.is_dir():
            return []
        found = []
        for d in self.checkpoint_root.iterdir():
            m = STEP_DIR.match(d.name)
            if m and d.is_dir():
                found.append((int(m.group(1)), d))
        return sorted(found)

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int = 2) -> Path:
        """``write(tmp)`` fills a temp folder that is renamed atomically to ``checkpoints/step-NNNNNN``;
        then all but the newest ``keep`` checkpoints are deleted (``keep`` <= 0 keeps all)."""
        if step < 0:
            raise DepthmuxError(f"checkpoint step must be >= 0, got {step}")
        final = self.checkpoint_root / f"step-{step:06d}"
        with atomic_directory(final) as tmp:
            write(tmp)
        if keep > 0:
            for _, d in self.checkpoints()[:-keep]:
                doomed = d.with_name(f".{d.name}.del.tmp")  # rename first: a half-deleted folder is never listed
                os.replace(d, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
        return final

    def latest_checkpoint(self, load: Callable[[Path], T]) -> tuple[int, Path, T] | None:
        """The newest checkpoint whose ``load(folder)`` succeeds, as ``(step, folder, loaded)``;
        None if there is none. A corrupt newer one is skipped with a one-line warning on stderr."""
        for step, d in reversed(self.checkpoints()):
            try:
                return step, d, load(d)
            except LOAD_ERRORS as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                print(f"warning: skipping corrupt checkpoint {d}: {reason}", file=sys.stderr)
        return None
