"""How the ranks of a data-parallel job share a cache: the one table of partitionings, by name.

:class:`~cachebrew.cache.feed.dataset.CacheDataset` takes ``rank``, ``world_size`` and
``partition``, one of :data:`PARTITIONS`:

==================  ================================================  ==============================
``partition``       rank r of N reads                                 its epoch order
==================  ================================================  ==============================
``shards``          its own share of the cache (item i to rank        its own, so the examples that
(default)           ``i % N``), ``batch_size`` examples per batch     train together depend on N
``global_batches``  its contiguous ``batch_size / N`` share of every  the one-process order, the
                    global batch (:mod:`.global_batches`)             same for any N (DDP distill)
==================  ================================================  ==============================

A partitioning is a small object the dataset holds (composition): which rank's order the
dataset computes, the per-rank batch, and how this rank's part of a planned epoch is cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cachebrew.cache.feed.global_batches import check_global_batch, split_plan
from cachebrew.cache.read.order import EpochPlan
from cachebrew.errors import ConfigError


class CachePartition(Protocol):
    """What :class:`~cachebrew.cache.feed.dataset.CacheDataset` asks of a partitioning.

    ``rank`` / ``world_size``: this process's data-parallel place (the launcher's).
    """

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def order_rank(self) -> tuple[int, int]:
        """``(rank, world_size)`` whose selection and epoch order the dataset computes."""
        ...

    def local_batch(self, batch_size: int) -> int:
        """Examples this rank reads per batch for the dataset's ``batch_size``."""
        ...

    def cut(self, plan: EpochPlan, batch_size: int, num_batches: int) -> EpochPlan:
        """This rank's part of the planned epoch (``num_batches`` batches of ``batch_size``)."""
        ...


@dataclass(frozen=True)
class ShardPartition:
    """``shards``: rank r reads its own share of the cache in its own order."""

    rank: int = 0
    world_size: int = 1

    def order_rank(self) -> tuple[int, int]:
        """This rank of this world."""
        return self.rank, self.world_size

    def local_batch(self, batch_size: int) -> int:
        """Every rank reads whole batches."""
        return batch_size

    def cut(self, plan: EpochPlan, batch_size: int, num_batches: int) -> EpochPlan:
        """The plan is this rank's already."""
        return plan


@dataclass(frozen=True)
class GlobalBatchPartition:
    """``global_batches``: rank r reads its share of every batch of the one-process order.

    Raises:
        ConfigError: (from :meth:`local_batch`) a batch not divisible by ``world_size``.
    """

    rank: int = 0
    world_size: int = 1

    def order_rank(self) -> tuple[int, int]:
        """Rank 0 of 1: the one-process order, for any number of ranks."""
        return 0, 1

    def local_batch(self, batch_size: int) -> int:
        """``batch_size / world_size`` (``batch_size`` is the global batch)."""
        return check_global_batch(batch_size, self.world_size)

    def cut(self, plan: EpochPlan, batch_size: int, num_batches: int) -> EpochPlan:
        """This rank's contiguous share of each global batch."""
        return split_plan(plan, batch_size, self.rank, self.world_size, num_batches)


PARTITIONS: dict[str, type[ShardPartition] | type[GlobalBatchPartition]] = {
    "shards": ShardPartition,
    "global_batches": GlobalBatchPartition,
}


def cache_partition(name: str, rank: int, world_size: int) -> CachePartition:
    """The partitioning ``name`` for rank ``rank`` of ``world_size``.

    Raises:
        ConfigError: an unknown name (the valid ones are listed).
    """
    if name not in PARTITIONS:
        raise ConfigError(f"unknown partition {name!r}; choose one of {list(PARTITIONS)}")
    return PARTITIONS[name](rank, world_size)
