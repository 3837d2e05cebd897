"""Checks of user input, one-line :class:`~depthmux.errors.DepthmuxError` each:

* numeric settings, shared by every config's ``validate()``, naming the option, the allowed range and
  the value given (so ``nan``, ``inf``, ``0`` or a negative number never reaches a training loop);
* :func:`check_model_folder`: the one check every model loader runs on a model folder (its
  ``config.json`` and its weight files), naming the file and what is wrong with it;
* :func:`check_output_file`, :func:`check_writable_parent`: an output path, before the work it will hold.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from depthmux.errors import DepthmuxError, require

#: Seeds are combined with epoch/step counters into torch generator seeds (unsigned 64-bit), so
#: they are kept to 32 bits.
MAX_SEED = 2**32 - 1


def check_seed(name: str, value) -> None:
    """One line unless ``value`` is an int in [0, MAX_SEED]."""
    require(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED,
        f"{name} must be an integer in [0, {MAX_SEED}], got {value!r}",
    )


def check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    """One line unless ``value`` is an int (not a bool) >= ``minimum`` (or None when allowed)."""
    if value is None and allow_none:
        return
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{name} must be an integer >= {minimum}, got {value!r}",
    )


def max_threads() -> int:
    """The most torch CPU threads a ``--threads`` may ask for: 4x this machine's cores, at most 1024
    (far more threads than cores only slows torch down; a huge count crashes its thread pool)."""
    return min(1024, 4 * (os.cpu_count() or 1))


def check_threads(name: str, value, allow_none: bool = True) -> None:
    """One line unless ``value`` is an int in [1, :func:`max_threads`] (or None when allowed)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    require(ok and value >= 1, f"{name} must be >= 1, got {value!r}")
    limit = max_threads()
    require(
        value <= limit,
        f"{name} must be at most {limit} (4x the {os.cpu_count() or 1} CPU cores here, at most 1024), got {value}",
    )


def check_float(
    name: str,
    value,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> None:
    """One line unless ``value`` is a finite number in the interval (open ends as given)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
    require(ok, f"{name} must be a finite number in {interval}, got {value!r}")


def check_device(name: str, value) -> None:
    """One line unless ``value`` names a device torch can use here ("cpu", "cuda", "cuda:1", "mps")."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise DepthmuxError(f"bad {name} {value!r}: {str(e).splitlines()[0]}") from None
    if device.type == "cuda":
        require(torch.cuda.is_available(), f"{name} {value}: no CUDA device is visible to torch here (use cpu)")
        require(
            device.index is None or device.index < torch.cuda.device_count(),
            f"{name} {value}: only {torch.cuda.device_count()} CUDA device(s) here",
        )
    elif device.type == "mps":
        require(torch.backends.mps.is_available(), f"{name} {value}: MPS is not available here (use cpu)")


def device_name(device) -> str:
    """``"cpu"`` or the accelerator's name (``"cuda: NVIDIA H200"``), for result files."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


# ---------------------------------------------------------------------------------------------
# model folders: the one check every loader runs before transformers or safetensors read a folder

#: ``config.json`` fields that, where present, are sizes every loader derives shapes from: each must be
#: an integer >= 1 (a 0 divides by zero, a string fails deep inside transformers). The optional ones may
#: also be null (transformers then derives them).
CONFIG_SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "d_model",
    "d_ff",
    "d_kv",
    "num_layers",
    "num_heads",
)
CONFIG_OPTIONAL_SIZE_FIELDS = ("num_key_value_heads", "head_dim", "num_decoder_layers")

#: bytes per element of each safetensors dtype (sub-byte and unknown dtypes are not size-checked)
_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def check_model_config(config, path) -> dict:
    """One line naming ``path`` (a ``config.json``) unless ``config`` is a JSON object whose size fields
    (:data:`CONFIG_SIZE_FIELDS`) are positive integers and whose hidden size splits into its heads."""
    if not isinstance(config, dict):
        raise DepthmuxError(f"{path} does not hold a JSON object")
    for name in CONFIG_SIZE_FIELDS + CONFIG_OPTIONAL_SIZE_FIELDS:
        if name not in config or (config[name] is None and name in CONFIG_OPTIONAL_SIZE_FIELDS):
            continue
        value = config[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DepthmuxError(f"{path}: {name} must be a positive integer, got {value!r}")
    hidden, heads, kv_heads = (config.get(k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    if hidden is not None and heads is not None and hidden % heads:  # transformers refuses it too
        raise DepthmuxError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise DepthmuxError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    return config


def check_safetensors_file(path) -> None:
    """One line naming ``path`` unless it is a whole safetensors file: an 8-byte header length, a JSON
    header, and tensors whose byte ranges match their dtype and shape and cover the rest of the file
    exactly (a truncated copy, garbage bytes or a file of another format are caught without reading the
    tensors)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise DepthmuxError(f"{path} is not a safetensors file, or is truncated ({size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DepthmuxError(f"{path} is not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise DepthmuxError(f"{path} is not a safetensors file: its header is not a JSON object")
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        ok = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
        ok = ok and isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
        if not ok or not 0 <= offsets[0] <= offsets[1]:
            raise DepthmuxError(f"{path} is corrupt: tensor {name!r} has no valid shape and byte range")
        width = _SAFETENSORS_DTYPE_BYTES.get(info.get("dtype"))
        if width is not None and offsets[1] - offsets[0] != width * math.prod(shape):
            raise DepthmuxError(
                f"{path} is corrupt: tensor {name!r} ({info['dtype']} {shape}) has "
                f"{offsets[1] - offsets[0]} bytes, expected {width * math.prod(shape)}"
            )
        ranges.append(offsets)
    data = size - 8 - n
    end = 0
    for start, stop in sorted(ranges):
        if start != end:
            raise DepthmuxError(f"{path} is corrupt: its tensors overlap or leave gaps")
        end = stop
    if end > data:
        raise DepthmuxError(f"{path} is truncated: it holds {data} bytes of tensor data, its header needs {end}")
    if end < data:
        raise DepthmuxError(f"{path} is corrupt: {data - end} bytes after its last tensor")


def check_model_folder(path, weights: bool = True) -> dict:
    """The one check every model loader runs before transformers or safetensors read a folder: ``path``
    is a folder with a valid ``config.json`` (:func:`check_model_config`) and weights, every
    ``*.safetensors`` file whole (:func:`check_safetensors_file`). Returns the parsed config; anything
    wrong is one line naming the file and what is wrong with it. ``weights=False`` checks the config
    only (to read the model type before the loader that checks the whole folder is chosen)."""
    from depthmux.utils.checkpoint import read_json

    path = Path(path)
    if not path.is_dir():
        raise DepthmuxError(f"no model folder at {path}" + (" (it is a file)" if path.exists() else ""))
    config_file = path / "config.json"
    if not config_file.is_file():
        raise DepthmuxError(f"{path} has no config.json: not a model folder")
    try:
        config = check_model_config(read_json(config_file, str(path)), config_file)
    except OSError as e:
        raise DepthmuxError(f"cannot read {config_file}: {e.strerror or e}") from None
    if not weights:
        return config
    tensors = sorted(path.glob("*.safetensors"))
    if not tensors and not any(path.glob("*.bin")):
        raise DepthmuxError(f"{path} has no weights (model.safetensors or pytorch_model.bin)")
    for file in tensors:
        try:
            check_safetensors_file(file)
        except OSError as e:
            raise DepthmuxError(f"cannot read {file}: {e.strerror or e}") from None
    return config


# ---------------------------------------------------------------------------------------------
# output paths: checked before the work whose result they will hold


def check_writable_parent(option: str, path) -> None:
    """One line unless the folder that will hold ``path`` exists (or can be made) and takes a new file:
    a temporary probe file is written there and removed."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".depthmux-write-test-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DepthmuxError(f"{option} {path}: cannot write in {parent} ({e.strerror or e})") from None


def check_output_file(option: str, path, extensions=None) -> None:
    """One line unless ``path`` can become an output file: not a folder, one of ``extensions`` (lower
    case, without the dot; None: any), in a folder that takes a new file (:func:`check_writable_parent`), and
    new: an existing file is never replaced (it may be a user's)."""
    path = Path(path)
    if path.is_dir():
        raise DepthmuxError(f"{option} {path} is a folder: give a file name")
    if path.exists() or path.is_symlink():
        raise DepthmuxError(f"{option} {path} already exists: give a new file name (nothing is overwritten)")
    if extensions is not None and path.suffix.lower().lstrip(".") not in extensions:
        raise DepthmuxError(
            f"{option} {path}: unknown file type {path.suffix or '(no extension)'}; use one of "
            + ", ".join(f".{e}" for e in sorted(extensions))
        )
    check_writable_parent(option, path)
