"""The ``depthmux`` command line: thin sub-commands over the recipes.

``depthmux mux ...``  data multiplexing (RevMUX) on a frozen encoder;
``depthmux lm ...``   recursive transformers and Mixture-of-Recursions;
``depthmux ee ...``   early exit (FREE): shallow-deep training and evaluation;
``depthmux serve``    an OpenAI-compatible server (``depthmux serve bench``: a load generator);
``depthmux --version``.

Every error reaches the user as ONE line on stderr starting ``error:``, exit status 2: a
:class:`depthmux.errors.DepthmuxError` from the library, or a usage error from Typer (unknown option or
command, a value of the wrong type, a missing argument), which ends with where to find help. Ctrl-C exits
130 and says how to resume.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

# Typer (>= 0.29) raises its own copy of click's exceptions; every usage error derives from TyperException.
from typer._click.exceptions import NoArgsIsHelpError

from depthmux import __version__
from depthmux.cli import ee, lm, mux, serve
from depthmux.errors import DepthmuxError

USAGE_STATUS = 2
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what shells report for Ctrl-C

app = typer.Typer(
    name="depthmux",
    help="Cheaper batch inference of pretrained transformers: multiplexing (width) and recursion (depth).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(mux.app, name="mux")
app.add_typer(lm.app, name="lm")
app.add_typer(ee.app, name="ee")
app.add_typer(serve.app, name="serve")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"depthmux {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Cheaper batch inference of pretrained transformers: multiplexing (width) and recursion (depth)."""


def one_line(message: str) -> str:
    """``message`` with its lines joined by spaces (a message must never break the one-line rule)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _fail(message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(USAGE_STATUS) from None


def _interrupted() -> None:
    print("interrupted: the last checkpoint is intact; rerun the same command with --resume", file=sys.stderr)
    raise SystemExit(INTERRUPTED_STATUS) from None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``depthmux`` command (``argv`` defaults to ``sys.argv[1:]``). Always ends with
    ``SystemExit`` when the status is not 0: 2 for any user error (one line on stderr), 130 for Ctrl-C."""
    try:
        code = app(args=argv, prog_name="depthmux", standalone_mode=False)
    except DepthmuxError as e:
        _fail(str(e))
    except NoArgsIsHelpError as e:  # `depthmux` or `depthmux mux` alone: show the help, but nothing ran
        text = e.format_message()  # with rich installed, Typer has already printed the help and returns ""
        if text.strip():
            print(text, file=sys.stderr)
        raise SystemExit(USAGE_STATUS) from None
    except typer.TyperException as e:  # unknown option/command, bad value, missing argument
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(e.format_message() + hint)
    except (KeyboardInterrupt, typer.Abort):  # typer.Abort: Typer's wrapper around EOF at a prompt
        _interrupted()
    else:
        if code == INTERRUPTED_STATUS:  # Typer turns Ctrl-C into a return value in non-standalone mode
            _interrupted()
        if isinstance(code, int) and code:
            raise SystemExit(code)
