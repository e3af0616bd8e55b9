"""This process's place among the processes of one job, and the one rank -> device rule.

A leaf that both stages import: ``cachebrew precompute`` (torchrun ranks or ``--part I/N``,
:mod:`cachebrew.teacher.parallel`) and ``cachebrew distill`` under torchrun (DDP,
:mod:`cachebrew.runner.distributed`) describe their process with the same :class:`World` and
place it on a device with the same :func:`rank_device`. torchrun's environment itself is read
by :func:`cachebrew.config.launched_world`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachebrew.config import launched_world, resolve_device
from cachebrew.errors import ConfigError

# how the processes of a job were started
LAUNCHERS = ("single", "torchrun", "part")


@dataclass(frozen=True)
class World:
    """Rank r of N processes (r < N), its GPU index and how the processes were started.

    Args:
        rank: this process's index r in [0, world_size).
        world_size: N, the number of processes (ranks, or ``--part`` parts).
        local_rank: torchrun's ``LOCAL_RANK`` (the GPU index on this machine), -1 elsewhere.
        launcher: one of :data:`LAUNCHERS`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = -1
    launcher: str = "single"

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"unknown launcher {self.launcher!r}; choose one of {LAUNCHERS}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} of {self.world_size}: expected 0 <= rank < N")

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that logs, writes and publishes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def label(self) -> str:
        """``part 1/3``, ``rank 1 of 2`` or ``single process`` for messages."""
        if self.launcher == "part":
            return f"part {self.rank}/{self.world_size}"
        return f"rank {self.rank} of {self.world_size}" if self.distributed else "single process"

    def owns(self, index: int) -> bool:
        """Whether item ``index`` (a shard window) is this process's: ``index % N == r``."""
        return index % self.world_size == self.rank


def launched() -> World:
    """The world torchrun started this process in (a single process without torchrun)."""
    rank, world_size, local_rank = launched_world()
    if world_size <= 1:
        return World()
    return World(rank, world_size, local_rank, "torchrun")


def rank_device(device: str | torch.device, world: World) -> torch.device:
    """The device of this process: one GPU per torchrun rank, never two ranks on one GPU.

    Under torchrun, ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` when CUDA exists (``auto``
    falls back to the CPU without it); any other name, and any other launcher, resolves as
    :func:`~cachebrew.config.resolve_device`.

    Raises:
        ConfigError: an unknown or unavailable device, or a torchrun rank whose ``LOCAL_RANK``
            has no GPU (more ranks than GPUs would silently share one).
    """
    if world.launcher != "torchrun":
        return resolve_device(device)
    local_rank = max(world.local_rank, 0)
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda" and str(device) == "cuda":
        resolved = torch.device("cuda", local_rank)
    if resolved.type == "cuda" and local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"torchrun: local rank {local_rank} has no GPU ({torch.cuda.device_count()} "
            "visible); start at most one process per GPU, or set the device to cpu"
        )
    return resolved
