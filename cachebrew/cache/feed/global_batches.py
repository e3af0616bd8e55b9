"""Data parallelism with one global order: every rank reads its share of each global batch.

:class:`CacheDataset` with ``rank``/``world_size`` gives each rank its own runs (run i to
rank ``i % world_size``) and its own order: fine for throughput, but the examples that train
together depend on the number of ranks. :class:`GlobalBatchDataset` is what DDP training needs
(``torchrun ... cachebrew distill``): the order of one process, cut the same way for any N.

- **Order.** The epoch order is the one-process order (``rank=0, world_size=1``): a pure
  function of ``(seed, epoch)`` and the example ids, so it depends neither on N nor on the
  cache's layout.
- **Global batch.** ``batch_size`` is the *global* batch B. Global batch j is positions
  ``[j*B, (j+1)*B)`` of that order, exactly the batch one process trains on; rank r reads the
  contiguous slice ``[r*B/N, (r+1)*B/N)`` of it. B must be divisible by N.
- **The trailing partial batch** (``drop_last=False``, m < B examples) is cut into N near-equal
  contiguous shares (``numpy.array_split``); a rank whose share would be empty (m < N) reads
  the batch's first example again, since every DDP rank has to run the step.
- **Position.** Batch index j on every rank is global batch j, so a data position (``resume_at``,
  a checkpoint's batches consumed) means the same thing under any N: a run saved with N ranks
  resumes with M ranks at the same place in the same global order.

With per-example-mean losses (the logits losses) and equal shares, DDP's gradient average is
the gradient one process computes on the global batch; losses averaged over tokens weight each
rank's tokens by its own count (as any DDP), so they agree only approximately.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.read.order import EpochPlan, plan_epoch
from cachebrew.cache.read.reader import CacheReader
from cachebrew.errors import ConfigError


def check_global_batch(batch_size: int, world_size: int) -> int:
    """The per-rank batch ``batch_size // world_size``.

    Raises:
        ConfigError: ``batch_size`` is not divisible by ``world_size``.
    """
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        raise ConfigError(
            f"batch_size: {batch_size} is the global batch and must be divisible by the "
            f"{world_size} ranks (each rank trains on batch_size / {world_size} examples of every "
            f"batch); use {lower or world_size} or {lower + world_size}"
        )
    return batch_size // world_size


def rank_share(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of one global batch of stream positions.

    Full batches split into equal slices; a shorter one into near-equal slices, an empty slice
    replaced by the batch's first position.
    """
    share = np.array_split(batch, world_size)[rank]
    return share if len(share) else batch[:1]


def split_plan(
    plan: EpochPlan, global_batch: int, rank: int, world_size: int, num_batches: int
) -> EpochPlan:
    """Rank ``rank``'s view of a one-process plan: its share of each of ``num_batches`` batches.

    The stream and read groups are the one-process ones; only ``order`` is cut, so a rank
    decodes no more than the chunks its own examples touch.
    """
    shares = [
        rank_share(plan.order[j * global_batch : (j + 1) * global_batch], rank, world_size)
        for j in range(num_batches)
    ]
    order = np.concatenate(shares) if shares else plan.order[:0]
    return EpochPlan(stream=plan.stream, group_starts=plan.group_starts, order=order)


class GlobalBatchDataset(CacheDataset):
    """A :class:`CacheDataset` whose ``batch_size`` is global, shared by ``world_size`` ranks.

    Yields ``len(self)`` batches per epoch on every rank (the one-process count), each this
    rank's share of the global batch with the same index (module docstring). Takes every
    keyword of :class:`CacheDataset`.

    Args:
        cache: a cache path / fsspec URL, or an open :class:`CacheReader`.
        batch_size: the global batch B (divisible by ``world_size``).
        rank, world_size: this process's DDP rank and the number of ranks.

    Raises:
        ConfigError: ``batch_size`` not divisible by ``world_size``, or an invalid argument.
    """

    def __init__(
        self,
        cache: str | os.PathLike[str] | CacheReader,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        **options: Any,
    ):
        if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"GlobalBatchDataset: rank={rank!r}, world_size={world_size!r}: expected "
                "0 <= rank < world_size"
            )
        local_batch = check_global_batch(batch_size, world_size)
        super().__init__(cache, batch_size=batch_size, rank=0, world_size=1, **options)
        self.global_batch_size = batch_size
        self.batch_size = local_batch  # what __iter__ slices this rank's plan by
        self.rank, self.world_size = rank, world_size

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's share of the one-process order of ``epoch`` (default: the current one)."""
        one_process = plan_epoch(
            self._runs,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            rank=0,
            shuffle=self.shuffle,
            buffer_size=self.buffer_size,
            num_examples=self.num_examples,
        )
        return split_plan(
            one_process, self.global_batch_size, self.rank, self.world_size, len(self)
        )

    def example_order(self, epoch: int | None = None) -> list[str]:
        """The example ids this rank yields in ``epoch``, in order (no data is decoded)."""
        plan = self.plan(epoch)
        items = plan.stream[plan.order]
        return [self.reader.shard(s).example_ids[r] for s, r in items.tolist()]
