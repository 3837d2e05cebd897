"""Progress bars of long commands: tqdm on stderr (``--progress/--no-progress``), as the training loops
show theirs, so ``--json`` output on stdout stays clean; :func:`log_above` prints messages above a live bar."""

from __future__ import annotations

from collections.abc import Callable


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, **kw):
    """A tqdm bar (count, rate, elapsed < ETA) on stderr; a no-op when ``enabled`` is False."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **kw)


def log_above(bar, log: Callable[[str], object]) -> Callable[[str], None]:
    """``log`` printed above ``bar``: the bar is cleared before each message and redrawn after it."""

    def say(msg: str) -> None:
        with bar.external_write_mode():
            log(msg)

    return say
