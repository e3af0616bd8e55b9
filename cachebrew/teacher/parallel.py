"""Scale-out of ``cachebrew precompute``: torchrun ranks and job-array parts (DESIGN §6).

Both cut the corpus the same way: the shard windows ``k`` with ``k % N == r`` go to rank (or
part) ``r`` of ``N``, which writes only those shards and its completion marker
``_done/rank-R-of-N.json`` (the :class:`~cachebrew.cache.CacheWriter` with ``rank=r,
world_size=N``). Since shard k always holds corpus positions ``[k * S, (k + 1) * S)``, the
cache content does not depend on N. The manifest is published once every rank or part is done:

- **torchrun**: after a gloo barrier with a timeout, rank 0 merges. Precompute exchanges no
  tensors, so the process group is gloo even on GPUs: it only carries the barriers.
- **parts** (``--part I/N``, no shared launcher): each part tries to publish after it finishes;
  the last one to finish succeeds. ``--finalize`` publishes, or names the missing parts.

A killed rank or part leaves its finished shards; a rerun with any N skips them. The process
record and its device (one GPU per torchrun rank, refused rather than shared) are
:mod:`cachebrew.world`'s, shared with ``cachebrew distill``.
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from cachebrew.cache import merge_manifest, remove_cache
from cachebrew.cache.format.storage import DONE, RUN_RECORD, CacheLocation, done_marker_name
from cachebrew.errors import CacheError, ConfigError
from cachebrew.world import World, launched

logger = logging.getLogger(__name__)

DEFAULT_BARRIER_TIMEOUT_S = 3600.0
_PART = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Partition:
    """Which shard windows this process computes, and how the manifest gets published.

    Args:
        world: this process among the job's (:class:`~cachebrew.world.World`: rank r of N,
            launched as ``"single"``, ``"torchrun"`` or ``"part"``).
        barrier_timeout_s: torchrun only: how long a rank waits for the others at a barrier.
    """

    world: World = field(default_factory=World)
    barrier_timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N (0-based, like ``$SLURM_ARRAY_TASK_ID``).

    Raises:
        ConfigError: not of the form I/N, or I out of range.
    """
    match = _PART.match(text)
    if match is None:
        raise ConfigError(f"--part {text!r}: expected I/N, e.g. --part 0/4 (parts 0..N-1)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            f"--part {text!r}: I must be in 0..N-1 and N >= 1, e.g. --part 0/{count or 4}"
        )
    return index, count


def make_partition(
    part: str | None = None, *, barrier_timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S
) -> Partition:
    """The partition of this process: ``--part I/N``, torchrun's ranks, or a single process.

    Raises:
        ConfigError: ``--part`` under torchrun (choose one way to split the corpus), or a bad
            ``--part`` / timeout.
    """
    if barrier_timeout_s <= 0:
        raise ConfigError(f"barrier timeout {barrier_timeout_s!r}: expected seconds > 0")
    world = launched()
    if part is not None:
        if world.distributed:
            raise ConfigError(
                f"--part {part} under torchrun (WORLD_SIZE={world.world_size}): use either "
                "torchrun's ranks or --part, not both"
            )
        index, count = parse_part(part)
        return Partition(World(index, count, launcher="part"), barrier_timeout_s)
    return Partition(world, barrier_timeout_s)


def begin(partition: Partition, out: str, overwrite: bool) -> bool:
    """Join the process group (torchrun) and clear ``out`` for ``overwrite``.

    With several ranks only rank 0 removes the old cache, before a barrier, so no rank deletes
    another's shards. Returns the ``overwrite`` the writer itself must use.

    Raises:
        ConfigError: ``overwrite`` with ``--part`` (a part cannot know what the others wrote).
        CacheError: a rank did not reach the barrier in time.
    """
    if partition.world.launcher == "part":
        if overwrite:
            raise ConfigError(
                "--overwrite with --part: parts would delete each other's shards; remove the old "
                "cache first (`rm -r` or delete the prefix) and start the parts without it"
            )
        return False
    if partition.world.launcher != "torchrun":
        return overwrite
    _init_process_group(partition)
    if overwrite and partition.world.is_main:
        remove_cache(out)
    barrier(partition, "clearing the output")
    return False


def _init_process_group(partition: Partition) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=partition.barrier_timeout_s)
        dist.init_process_group("gloo", timeout=timeout)


def barrier(partition: Partition, what: str) -> None:
    """Wait for every torchrun rank (gloo ``monitored_barrier``: names a rank that never came).

    Raises:
        CacheError: the timeout passed or a rank died; no manifest is written.
    """
    import torch.distributed as dist

    if partition.world.launcher != "torchrun":
        return
    timeout = datetime.timedelta(seconds=partition.barrier_timeout_s)
    try:
        dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
    except RuntimeError as error:
        raise CacheError(
            f"{partition.world.label}: not every rank reached the barrier after {what} within "
            f"{partition.barrier_timeout_s:g} s ({str(error).splitlines()[0]}); no manifest was "
            "written; rerun precompute (with any number of ranks) to resume"
        ) from error


def publish(partition: Partition, out: str) -> dict[str, Any] | None:
    """After this rank's writer closed: the manifest if this process published it, else None.

    Single process: the writer already published. torchrun: barrier, then rank 0 merges, then a
    last barrier so no rank exits (and no launcher tears the job down) before the manifest is
    there. Part: publishes if every part is done, else logs which parts are missing.
    """
    if partition.world.launcher == "single":
        return None
    if partition.world.launcher == "torchrun":
        barrier(partition, "writing its shards")
        manifest = _merge(out, partition.world.world_size) if partition.world.is_main else None
        barrier(partition, "publishing the manifest")
        return manifest
    missing = missing_parts(out, partition.world.world_size)
    if missing:
        logger.info(
            "%s done; waiting for parts %s of %d before the manifest is published (the last "
            "part to finish, or `cachebrew precompute --finalize`, publishes it)",
            partition.world.label,
            missing,
            partition.world.world_size,
        )
        return None
    return _merge(out, partition.world.world_size)


def missing_parts(out: str, world_size: int) -> list[int]:
    """The parts (ranks) of ``world_size`` without a completion marker in ``out``."""
    loc = _fresh_location(out)
    return [
        r
        for r in range(world_size)
        if not loc.exists(loc.join(DONE, done_marker_name(r, world_size)))
    ]


def finalize(out: str, world_size: int | None = None) -> dict[str, Any]:
    """Publish the manifest of a ``--part`` run once every part is complete.

    Args:
        out: the cache root the parts wrote to.
        world_size: N; inferred from the completion markers when None.

    Raises:
        CacheError: no run was started there, or parts are missing (names each one and the
            command that completes it).
    """
    loc = _fresh_location(out)
    if loc.read_json(loc.join(RUN_RECORD)) is None:
        raise CacheError(f"{out}: no precompute run was started there (no {RUN_RECORD})")
    counts = sorted({int(m.group(2)) for m in map(_MARKER.match, loc.listdir(loc.join(DONE))) if m})
    if world_size is None:
        if len(counts) != 1:
            found = f"parts of {counts} runs" if counts else "no completed part"
            raise CacheError(f"{out}: cannot tell the number of parts ({found}); pass --part I/N")
        world_size = counts[0]
    missing = missing_parts(out, world_size)
    if missing:
        names = ", ".join(f"{r}/{world_size}" for r in missing)
        raise CacheError(
            f"{out}: parts {names} have not finished (no completion marker); run "
            f"`cachebrew precompute ... --part I/{world_size}` for each, then --finalize again"
        )
    return _merge(out, world_size)


_MARKER = re.compile(r"rank-(\d{5})-of-(\d{5})\.json$")


def _merge(out: str, world_size: int) -> dict[str, Any]:
    _fresh_location(out)
    return merge_manifest(out, world_size=world_size)


def _fresh_location(out: str) -> CacheLocation:
    """The cache root with fsspec's listing cache dropped: other processes wrote to it since.

    (s3fs and other object-store clients cache directory listings per process; a stale one
    would hide the shards the other ranks published.)
    """
    loc = CacheLocation(out)
    loc.fs.invalidate_cache()
    return loc
