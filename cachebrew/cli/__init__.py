"""The ``cachebrew`` command line: every command, one way to report an error.

``app`` (:mod:`cachebrew.cli.app`) holds the global options; the commands register on it from
:mod:`cachebrew.cli.teacher_commands` (stage one) and :mod:`cachebrew.cli.training_commands`
(stage two); ``cachebrew data`` is :mod:`cachebrew.data.cli`.
"""

from __future__ import annotations

import logging

# the commands register on `app` on import, in the order `cachebrew --help` lists them
from cachebrew.cli import teacher_commands, training_commands  # noqa: F401
from cachebrew.cli.app import _DEBUG, app
from cachebrew.data.cli import data_app

app.add_typer(data_app, name="data")

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: logging set up, then ``app``, whose group maps every command's
    errors (:class:`~cachebrew.cli.app.ErrorMappingGroup`) to one line and exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _DEBUG["on"] = False
    app(args=argv)
