"""A manifest that does not lie: its counts, totals and shard list against the disk (DESIGN §7).

Two levels, each returning every problem found (one line each):

- :func:`manifest_problems` (cheap, on every open): the shard list is ``0..n-1`` in order, each
  path stays inside the cache root (no ``..``, no absolute path, no symlink leading out), the
  totals equal the sums over the list, and the shards published on disk are exactly the listed
  ones (a dropped entry would silently shrink the data while the totals still claim it);
  an exact-logits cache's ``lm_head.safetensors`` is there with the manifest's size.
- :func:`shard_problems` (full, under ``verify``): one shard's index against its manifest entry
  and its arrays (row counts, offsets and lengths tile each array exactly, array names confined).
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import numpy as np

from cachebrew.cache.format.lm_head import head_problems
from cachebrew.cache.format.storage import INDEX, SHARDS, CacheLocation
from cachebrew.errors import CacheError


def confined_path(loc: CacheLocation, relative: Any, what: str) -> str:
    """``relative`` joined under the cache root, refused if it could lead outside it.

    Raises:
        CacheError: not a relative path, a ``..`` part, or (local) a symlink resolving outside.
    """
    if not isinstance(relative, str) or not relative:
        raise CacheError(f"{loc.path}: {what} is {relative!r}, not a relative path")
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
        raise CacheError(
            f"{loc.path}: {what} {relative!r} leads outside the cache root; the cache was "
            "edited or crafted: rebuild it with `cachebrew precompute`"
        )
    path = loc.join(posixpath.normpath(relative))
    if loc.is_local:
        root = os.path.realpath(loc.root)
        real = os.path.realpath(path)
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise CacheError(
                f"{loc.path}: {what} {relative!r} resolves to {real}, outside the cache root "
                "(a symlink leads out); replace the link with the shard itself or rebuild the cache"
            )
    return path


def manifest_problems(loc: CacheLocation, manifest: dict[str, Any]) -> list[str]:
    """Every way ``manifest.json`` disagrees with itself or with the shards on disk (cheap)."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return [f"shards: expected a list, got {type(shards).__name__}"]
    problems = []
    for position, entry in enumerate(shards):
        problems += _entry_problems(loc, position, entry)
    if problems:
        return problems
    totals = manifest.get("totals") or {}
    listed = sum(int(entry["num_examples"]) for entry in shards)
    if totals.get("num_examples") != listed:
        problems.append(
            f"totals.num_examples is {totals.get('num_examples')!r} but the listed shards hold "
            f"{listed} examples"
        )
    if totals.get("num_shards") != len(shards):
        problems.append(
            f"totals.num_shards is {totals.get('num_shards')!r} but {len(shards)} shards are listed"
        )
    problems += head_problems(loc, manifest, full=False)
    on_disk = _published_on_disk(loc)
    unlisted = sorted(on_disk - set(range(len(shards))))
    if unlisted:
        problems.append(
            f"shards {unlisted} are on disk under {SHARDS}/ but not listed in the manifest"
        )
    return problems


def _entry_problems(loc: CacheLocation, position: int, entry: Any) -> list[str]:
    where = f"shards[{position}]"
    if not isinstance(entry, dict):
        return [f"{where}: expected an object, got {entry!r}"]
    problems = []
    if entry.get("index") != position:
        problems.append(f"{where}.index is {entry.get('index')!r}, expected {position}")
    count = entry.get("num_examples")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        problems.append(f"{where}.num_examples is {count!r}, expected a count >= 0")
    if not isinstance(entry.get("index_sha256"), str):
        problems.append(f"{where}.index_sha256 is missing")
    try:
        path = confined_path(loc, entry.get("path"), f"{where}.path")
    except CacheError as error:
        return [*problems, str(error).removeprefix(f"{loc.path}: ")]
    if not loc.exists(f"{path}/{INDEX}"):
        problems.append(f"{where}: {entry.get('path')}/{INDEX} does not exist")
    return problems


def _published_on_disk(loc: CacheLocation) -> set[int]:
    names = [n for n in loc.listdir(loc.join(SHARDS)) if n.isdigit() and len(n) == 5]
    return {int(n) for n in names if loc.exists(loc.join(SHARDS, n, INDEX))}


def check_manifest(loc: CacheLocation, manifest: dict[str, Any]) -> None:
    """Raise if :func:`manifest_problems` finds anything (every problem in one message).

    Raises:
        CacheError: names ``manifest.json`` and each problem; the fix is to rebuild.
    """
    problems = manifest_problems(loc, manifest)
    if problems:
        lines = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CacheError(
            f"{loc.path}/manifest.json does not match the cache: {lines}{more}; the manifest "
            "was edited or the shards changed: rerun `cachebrew precompute --overwrite` to rebuild"
        )


def shard_problems(entry: dict[str, Any], table: Any, meta: dict[str, Any]) -> list[str]:
    """One shard's index (``table``, ``meta``) against its manifest entry and its own arrays."""
    where = f"shard {entry['index']}"
    rows = table.num_rows
    problems = []
    if not rows == meta.get("num_examples") == entry["num_examples"]:
        problems.append(
            f"{where}: index has {rows} rows, its metadata says {meta.get('num_examples')}, "
            f"the manifest {entry['num_examples']}"
        )
    for name, info in meta.get("arrays", {}).items():
        if "/" in name or "\\" in name or name.startswith("."):
            problems.append(f"{where}: array name {name!r} is not a plain name")
            continue
        if name.endswith(".scale") or f"{name}.offset" not in table.column_names:
            continue
        offsets = table.column(f"{name}.offset").to_numpy()
        lengths = table.column(f"{name}.length").to_numpy()
        problems += _tiling_problems(f"{where}, array {name!r}", offsets, lengths, info["rows"])
    return problems


def _tiling_problems(where: str, offsets: Any, lengths: Any, rows: int) -> list[str]:
    """Offsets and lengths must cover ``[0, rows)`` in order, without gaps or overlaps."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(offsets) == 0:
        return [] if rows == 0 else [f"{where}: {rows} rows but no example points into them"]
    ends = offsets + lengths
    if (lengths < 0).any() or offsets[0] != 0 or (offsets[1:] != ends[:-1]).any():
        return [f"{where}: index offsets and lengths do not tile the array in order"]
    if ends[-1] != rows:
        return [f"{where}: index covers {int(ends[-1])} rows, the array has {rows}"]
    return []
