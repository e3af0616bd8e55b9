"""What a writer finds at its path: a complete cache, a run to resume, or nothing.

:func:`prepare_directory` refuses a complete cache (or removes it with ``overwrite``) and a
started run of a different configuration, and records this run's identity (``_run.json``) on a
fresh path. :func:`find_published` picks up the shards a killed run of the same configuration
published, so that run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachebrew.cache.format.manifest import (
    published_shards,
    read_shard_index,
    rerun_differences,
    run_differences,
)
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.format.storage import MANIFEST, RUN_RECORD, STAGING, CacheLocation
from cachebrew.cache.write.ownership import check_owned, remove_owned
from cachebrew.errors import CacheError, CacheMismatchError, CacheUpToDateError

logger = logging.getLogger(__name__)


def prepare_directory(
    loc: CacheLocation, run: dict[str, Any], *, overwrite: bool, world_size: int
) -> None:
    """Make ``loc`` ready for the run ``run`` (its ``run_record``).

    Raises:
        CacheUpToDateError: a complete cache of the same run is there (single rank).
        CacheError: a complete cache is there, or files cachebrew did not write.
        CacheMismatchError: a started run of a different configuration is there (names what
            differs).
    """
    check_owned(loc, "write a cache")
    if overwrite:
        remove_owned(loc)
    elif loc.exists(loc.join(MANIFEST)):
        _refuse_complete_cache(loc, loc.read_json(loc.join(MANIFEST)) or {}, run, world_size)
    previous = loc.read_json(loc.join(RUN_RECORD))
    if previous is None:
        loc.write_json_atomic(loc.join(RUN_RECORD), run)
        return
    differences = run_differences(previous, run)
    if differences:
        lines = "\n".join(f"  - {d}" for d in differences)
        raise CacheMismatchError(
            f"cannot resume {loc.path}: it was started with a different configuration:\n"
            f"{lines}\npass --overwrite (overwrite=True) to start over"
        )


def _refuse_complete_cache(
    loc: CacheLocation, manifest: dict[str, Any], run: dict[str, Any], world_size: int
) -> None:
    """Up to date (same content, however paths were spelled), or say what differs."""
    differences = rerun_differences(manifest, run)
    if not differences and world_size == 1:
        raise CacheUpToDateError(
            f"{loc.path} already holds a complete cache of the same teacher, corpus "
            "and features: it is up to date, nothing to do (pass --overwrite to recompute it)"
        )
    head = " that differs from this run:" if differences else " (manifest.json exists)"
    what = "".join(f"\n  - {d}" for d in differences)
    raise CacheError(
        f"{loc.path} already holds a complete cache{head}{what}\n"
        "pass --overwrite (overwrite=True) to replace it"
    )


@dataclass
class Published:
    """The shards already at a cache path, as a resuming writer continues from them.

    Attributes:
        shards: shard index -> the example ids it holds.
        widths: stored array name -> its width (new examples must match).
        label_type: the shards' label type, or None.
    """

    shards: dict[int, list[str]] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    label_type: str | None = None


def find_published(
    loc: CacheLocation, spec: FeatureSpec, owns_shard: Callable[[int], bool]
) -> Published:
    """The published shards at ``loc``; removes the staging leftovers of the shards this rank
    owns (``owns_shard``: a killed run's half-written shards; other ranks may be writing)."""
    found = Published()
    for shard in published_shards(loc):
        table, meta, _ = read_shard_index(loc, shard)
        found.shards[shard] = table.column("example_id").to_pylist()
        for name in spec.data_arrays:
            found.widths.setdefault(name, meta["arrays"][name]["width"])
        found.label_type = found.label_type or meta["label_type"]
    for name in loc.listdir(loc.join(STAGING)):
        if name.split(".")[0].isdigit() and owns_shard(int(name.split(".")[0])):
            loc.remove(loc.join(STAGING, name))
    if found.shards:
        logger.info("resuming %s: %d shards already written", loc.path, len(found.shards))
    return found
