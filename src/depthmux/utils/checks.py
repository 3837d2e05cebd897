"""Checks of numeric settings, shared by every config's ``validate()``: one-line
:class:`~depthmux.errors.DepthmuxError` naming the option, the allowed range and the value given
(so ``nan``, ``inf``, ``0`` or a negative number never reaches a training loop)."""

from __future__ import annotations

import math

from depthmux.errors import require

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
