"""The Typer app, its global options and what every command shares (error mapping, quiet logs).

Every command, ``cachebrew data ...`` included, runs inside :class:`ErrorMappingGroup.invoke`:
the one place where a library error (:class:`~cachebrew.errors.CachebrewError`) or an
``OSError`` that escaped the library (a full disk, a permission) becomes
``error: <message> (rerun with --debug for the traceback)`` on stderr and exit code 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup

from cachebrew.errors import CachebrewError

# Set by the global --debug flag: library errors then propagate with their traceback.
_DEBUG = {"on": False}
DEBUG_HINT = "(rerun with --debug for the traceback)"


def error_line(error: BaseException) -> str:
    """The one line (or block, for several config problems) every command's error prints."""
    return f"error: {error} {DEBUG_HINT}"


class ErrorMappingGroup(TyperGroup):
    """The ``cachebrew`` group: every subcommand is invoked inside its error mapping."""

    def invoke(self, ctx: Any) -> Any:  # typer vendors click: its Context is private
        try:
            return super().invoke(ctx)
        except (CachebrewError, OSError) as error:
            if _DEBUG["on"]:
                raise
            typer.echo(error_line(error), err=True)
            raise typer.Exit(code=1) from None


app = typer.Typer(
    name="cachebrew",
    cls=ErrorMappingGroup,
    help="Distill NLP models with a teacher that runs once: precompute a cache, then distill from it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from cachebrew._version import __version__

        typer.echo(f"cachebrew {__version__}")
        raise typer.Exit()


def _third_party_logs(verbose: bool) -> None:
    """transformers' loading chatter (LOAD REPORT tables, notices) only with ``--verbose``."""
    level = "info" if verbose else "error"
    os.environ["TRANSFORMERS_VERBOSITY"] = level  # read when transformers is first imported
    if not verbose:  # "Loading weights" / "Writing model shards" bars: read on import too
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(logging.INFO if verbose else logging.ERROR)
        if not verbose:
            hf_logging.disable_progress_bar()


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of an error instead of one line."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Also show third-party loading messages (transformers)."
    ),
) -> None:
    """Distill NLP models with a teacher that runs once: precompute a cache, then distill from it.

    Shell completion: `cachebrew --install-completion` (bash, zsh, fish, PowerShell).
    """
    _DEBUG["on"] = debug
    _third_party_logs(verbose)


@contextlib.contextmanager
def _quiet_logs(quiet: bool) -> Iterator[None]:
    """With ``--quiet``, only warnings and errors are logged (the bars are off already)."""
    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


_DRY_RUN_HELP = "Print the resolved config and the plan, check the cache; write nothing."
