"""User-facing errors.

Every problem caused by the user's input (a bad argument, a missing file, a malformed row)
is raised as :class:`DepthmuxError` with a one-line message naming the problem. The CLI prints
that line and exits with status 2 instead of showing a traceback.
"""


class DepthmuxError(ValueError):
    """A clear, one-line error about the user's input or files."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`DepthmuxError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DepthmuxError(message)
