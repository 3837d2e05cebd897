"""The ``depthmux`` command line: thin sub-commands over the library.

``depthmux mux ...``  data multiplexing (RevMUX) on a frozen encoder;
``depthmux lm ...``   recursive transformers and Mixture-of-Recursions.

User errors (:class:`depthmux.errors.DepthmuxError`) are printed as one line, exit status 2.
"""

from __future__ import annotations

import sys

import typer

from depthmux.errors import DepthmuxError

app = typer.Typer(
    name="depthmux",
    help="Cheaper batch inference of pretrained transformers: multiplexing (width) and recursion (depth).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from depthmux.cli import lm, mux

    app.add_typer(mux.app, name="mux")
    app.add_typer(lm.app, name="lm")


_register()


def _interrupted() -> None:
    print("interrupted: the last checkpoint is intact; rerun the same command with --resume", file=sys.stderr)
    raise SystemExit(130) from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app, turning :class:`DepthmuxError` into a one-line message."""
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C into a return value in non-standalone mode
            _interrupted()
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except DepthmuxError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            raise SystemExit(e.exit_code) from None
        if isinstance(e, click.exceptions.Abort):  # click's wrapper around Ctrl-C
            _interrupted()
        raise
