"""Checks of numeric settings, shared by every config's ``validate()``: one-line
:class:`~depthmux.errors.DepthmuxError` naming the option, the allowed range and the value given
(so ``nan``, ``inf``, ``0`` or a negative number never reaches a training loop)."""

from __future__ import annotations

import math

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
