"""depthmux: cheaper batch inference of pretrained transformers.

Two orthogonal ways to spend less compute per request:

* width  -- :mod:`depthmux.multiplexing` (RevMUX: N inputs share one frozen forward pass);
* depth  -- :mod:`depthmux.recursion` (recursive transformers, Mixture-of-Recursions).

See ``SPEC.md`` (shared reference) for the equations referenced in docstrings as "SPEC x.y".
"""

from depthmux.errors import DepthmuxError

__version__ = "0.1.0"
__all__ = ["DepthmuxError", "__version__"]
