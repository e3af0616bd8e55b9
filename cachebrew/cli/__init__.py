"""The ``cachebrew`` command line: every command, one way to report an error.

``app`` (:mod:`cachebrew.cli.app`) holds the global options; the commands register on it from
:mod:`cachebrew.cli.teacher_commands` (stage one) and :mod:`cachebrew.cli.training_commands`
(stage two); ``cachebrew data`` is :mod:`cachebrew.data.cli`.
"""

from __future__ import annotations

import logging

import typer

# the commands register on `app` on import, in the order `cachebrew --help` lists them
from cachebrew.cli import teacher_commands, training_commands  # noqa: F401
from cachebrew.cli.app import _DEBUG, app
from cachebrew.data.cli import data_app
from cachebrew.errors import CachebrewError

app.add_typer(data_app, name="data")

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: library errors become one clear line and exit code 1.

    An ``OSError`` that escaped the library (a full disk, a permission) is reported the same
    way; ``--debug`` shows the traceback of either instead.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _DEBUG["on"] = False
    try:
        app(args=argv)
    except (CachebrewError, OSError) as error:
        if _DEBUG["on"]:
            raise
        typer.echo(f"error: {error} (rerun with --debug for the traceback)", err=True)
        raise SystemExit(1) from None
