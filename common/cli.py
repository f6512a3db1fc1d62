"""The `consortia` command: a root Typer app whose command groups are plugged in.

`server/` and `client/` each register their commands through the `consortia.cli` entry
point group, so `common/` never imports either side.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points, version

import typer

from consortia.common.errors import ConsortiaError
from consortia.common.logs import setup_logging

__all__ = ["build_app", "main"]

ENTRY_POINT_GROUP = "consortia.cli"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"consortia {version('consortia')}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """The root app with every installed command group registered."""
    app = typer.Typer(
        name="consortia",
        help="Consortia: federated learning on medical images across hospitals.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
        version: bool = typer.Option(
            False,
            "--version",
            help="Print the installed Consortia release and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ) -> None:
        setup_logging(logging.DEBUG if verbose else logging.INFO)

    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        register = entry.load()
        register(app)
    return app


def main() -> None:
    """Console-script entry point; user errors end with a clear message and exit code 2."""
    app = build_app()
    try:
        # Without standalone mode, click returns an abort's exit code (130) instead of
        # raising it.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except ConsortiaError as err:
        # A user error: one plain message (no log prefix), the same for every command.
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors carry their own exit code
        from click import ClickException

        if isinstance(exc, ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
