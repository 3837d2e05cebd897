"""Atomic checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``<dir>/`` holding ``model.safetensors`` (or any named tensor files)
and ``state.json``. Writes go to a temporary sibling folder that is renamed into place, so an
interrupted write never leaves a half-written checkpoint: the previous one stays loadable at every
crash point (:func:`atomic_directory`, :func:`existing_directory`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from depthmux.errors import DepthmuxError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _aside(directory: Path) -> Path:
    """Where :func:`atomic_directory` parks the previous ``directory`` while swapping in a new one."""
    return directory.with_name(f".{directory.name}.old")


def existing_directory(directory: str | os.PathLike) -> Path:
    """``directory``, or the previous version parked aside by a save interrupted between its
    two renames (see :func:`atomic_directory`); read-only, safe to call while a writer runs."""
    directory = Path(directory)
    if not directory.exists() and _aside(directory).is_dir():
        return _aside(directory)
    return directory


def recover_directory(directory: str | os.PathLike) -> None:
    """Finish or undo a save of ``directory`` that was interrupted (writers only, under the run's lock):
    a previous version parked aside comes back when ``directory`` is missing, and is deleted when the
    new ``directory`` is in place."""
    directory = Path(directory)
    aside = _aside(directory)
    if not aside.exists():
        return
    if directory.exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(aside, directory)


@contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``directory`` whole.

    Replacing takes two renames (the old folder to ``.<name>.old``, the new one into place), then
    the old one is deleted. A crash at any point leaves a loadable version: before the first rename
    the old ``directory``; between the renames the old one at ``.<name>.old``, which
    :func:`existing_directory` reads and :func:`recover_directory` (run at the start of the next
    save) puts back; after the second rename the new one. On an error the old ``directory`` is
    restored and the temporary folder deleted.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(directory)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    aside = _aside(directory)
    try:
        yield tmp
        moved = directory.exists()
        if moved:
            os.replace(directory, aside)
        os.replace(tmp, directory)
        if moved:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not directory.exists():
            os.replace(aside, directory)
        raise


def save_checkpoint(
    directory: str | os.PathLike, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]
) -> Path:
    """Atomically write a checkpoint folder.

    Args:
        directory: target folder; replaced as a whole.
        tensors: file stem -> {name: tensor}; each becomes ``<stem>.safetensors``.
        state: JSON-serialisable metadata (config, step, RNG seeds, metrics), ``state.json``.
    """
    with atomic_directory(directory) as tmp:
        for stem, named in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in named.items()}, str(tmp / f"{stem}.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    return Path(directory)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; a syntax or encoding error becomes ``"<what>: <name> is not valid JSON"``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DepthmuxError(f"{what}: {path.name} is not valid JSON ({str(e).splitlines()[0]})") from None


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a folder written by :func:`save_checkpoint`; clear errors if missing or corrupt."""
    directory = existing_directory(directory)
    if not directory.is_dir():
        raise DepthmuxError(f"checkpoint not found: {directory}")
    state_path = directory / "state.json"
    if not state_path.is_file():
        raise DepthmuxError(f"corrupt checkpoint {directory}: state.json is missing")
    state = read_json(state_path, f"corrupt checkpoint {directory}")
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        try:
            tensors[f.stem] = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise DepthmuxError(f"corrupt checkpoint {directory}: cannot read {f.name} ({e})") from None
    return tensors, state


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into flat tensors (``"<param id>.<name>"``, for safetensors)
    and JSON metadata (non-tensor state and param groups)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_tensors`: tuples (e.g. Adam's betas) come back as tuples."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    template = optimizer.state_dict()["param_groups"]
    groups = [
        {k: (tuple(v) if isinstance(t.get(k), tuple) else v) for k, v in g.items()}
        for g, t in zip(meta["param_groups"], template, strict=True)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
