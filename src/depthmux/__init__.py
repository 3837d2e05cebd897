"""depthmux: cheaper batch inference of pretrained transformers.

Two orthogonal ways to spend less compute per request:

* width  -- :mod:`depthmux.multiplexing` (RevMUX: N inputs share one frozen forward pass);
* depth  -- :mod:`depthmux.recursion` (recursive transformers, Mixture-of-Recursions).

See ``SPEC.md`` (shared reference) for the equations referenced in docstrings as "SPEC x.y".
This file runs before every submodule, so it imports :mod:`depthmux.errors` only (docs/CONVENTIONS.md).
"""

from importlib.metadata import PackageNotFoundError, version

from depthmux.errors import DepthmuxError

try:
    __version__ = version("depthmux")  # the installed distribution's version (pyproject.toml)
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["DepthmuxError", "__version__"]
