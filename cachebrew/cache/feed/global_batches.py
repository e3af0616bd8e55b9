"""Data parallelism with one global order: every rank reads its share of each global batch.

:class:`CacheDataset` with ``rank``/``world_size`` gives each rank its own runs (run i to
rank ``i % world_size``) and its own order: fine for throughput, but the examples that train
together depend on the number of ranks. ``CacheDataset(..., partition="global_batches")``
(:mod:`cachebrew.cache.feed.partition`) is what DDP training needs (``torchrun ... cachebrew
distill``): the order of one process, cut the same way for any N. This module is its arithmetic.

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

import numpy as np

from cachebrew.cache.read.order import EpochPlan
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
