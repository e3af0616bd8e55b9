"""The ``cachebrew`` command line: parse, load config, call one runner, map errors to exit 1."""

from __future__ import annotations

import logging

import typer

from cachebrew.errors import CachebrewError

app = typer.Typer(
    name="cachebrew",
    help="Distill NLP models with a teacher that runs once: precompute a cache, then distill from it.",
    no_args_is_help=True,
    add_completion=False,
)


def _not_yet(command: str, issue: str) -> None:
    typer.echo(f"cachebrew {command}: not yet available (arrives with {issue}).", err=True)
    raise typer.Exit(code=2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def precompute() -> None:
    """Run the teacher once over a corpus and write its outputs to a cache."""
    _not_yet("precompute", "'Cache format v1 and cachebrew precompute'")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def inspect() -> None:
    """Describe a cache: teacher, corpus, features, sizes."""
    _not_yet("inspect", "'Cache format v1 and cachebrew precompute'")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def verify() -> None:
    """Check a cache's checksums and, with a teacher, its values."""
    _not_yet("verify", "'Cache format v1 and cachebrew precompute'")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def distill() -> None:
    """Train a student from a cache."""
    _not_yet("distill", "'cachebrew distill: stream the cache into a student'")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep() -> None:
    """Train many students over one cache."""
    _not_yet("sweep", "'cachebrew distill: stream the cache into a student'")


def main() -> None:
    """Console entry point: library errors become one clear line and exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except CachebrewError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None
