"""``python -m depthmux`` is the ``depthmux`` command."""

from depthmux.cli import main

main()
