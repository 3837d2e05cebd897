"""``python -m depthmux`` is the ``depthmux`` command (the entry point above the CLI, docs/CONVENTIONS.md)."""

from depthmux.cli import main

main()
