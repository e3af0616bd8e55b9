"""The cache in Trainer's terms: a dataset of collated batches, a loader with ``set_epoch``.

A cache is read the way ``cachebrew distill`` reads it (DESIGN §4): contiguous chunk runs, a
mixing buffer, the epoch order a pure function of ``(seed, epoch)``, and under torchrun /
``accelerate launch`` each rank decoding only its share of every global batch
(``CacheDataset(..., partition="global_batches")``, :mod:`cachebrew.cache.feed.global_batches`). The dataset therefore
yields batches it collated itself (padded to the batch's longest example, with the
``teacher_cache`` part built from the stored features), and :class:`CacheBatchLoader` hands them
to Trainer one by one (``batch_size=None``):

- ``len(loader)`` is the batches per epoch, so Trainer computes the steps per epoch itself;
- Trainer's ``set_epoch(epoch)`` selects the epoch's order;
- a resumed epoch starts at its batch position without decoding the skipped batches
  (:meth:`CacheBatchLoader.skipping`, Trainer's ``get_resumed_dataloader``).

The global batch is ``per_device_train_batch_size * world_size``: the batches one process
trains on, cut into contiguous per-rank shares, so N ranks train on the one-process batches.
The loader is not passed to ``accelerator.prepare``: accelerate would otherwise have rank 0
read every batch and dispatch it (its default for iterable datasets), or every rank read
everything and keep a slice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.read.reader import CacheReader
from cachebrew.errors import ConfigError

CacheSource = str | os.PathLike[str] | CacheReader | CacheDataset


def cache_train_dataset(
    cache: CacheSource,
    *,
    per_device_batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    drop_last: bool = False,
    device: str | torch.device | None = None,
    options: Mapping[str, Any] | None = None,
) -> CacheDataset:
    """The training dataset of one rank: its share of each global batch of the cache.

    Args:
        cache: a cache path / fsspec URL, an open reader, or a ready :class:`CacheDataset`
            (used as given after checking its batch size and rank).
        per_device_batch_size: Trainer's ``per_device_train_batch_size``.
        rank, world_size: Trainer's ``process_index`` and ``world_size``.
        seed: the epoch order is a pure function of ``(seed, epoch)``.
        drop_last: drop a trailing partial global batch.
        device: where the student trains (CUDA: pinned, non-blocking feature copies).
        options: more :class:`CacheDataset` keywords (``buffer_size``, ``example_ids``,
            ``student_items``, ``pad_id``, ``prefetch``...).

    Raises:
        ConfigError: a given dataset does not match the batch size or the rank.
    """
    if isinstance(cache, CacheDataset):
        _check_given_dataset(cache, per_device_batch_size, rank, world_size)
        return cache
    kwargs: dict[str, Any] = {"prefetch": 1, "shuffle": True, **(options or {})}
    return CacheDataset(
        cache,
        partition="global_batches",
        batch_size=per_device_batch_size * world_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        drop_last=drop_last,
        device=device,
        **kwargs,
    )


def _check_given_dataset(
    dataset: CacheDataset, per_device_batch_size: int, rank: int, world_size: int
) -> None:
    problems = []
    if dataset.batch_size != per_device_batch_size:
        problems.append(
            f"the CacheDataset yields batches of {dataset.batch_size} but "
            f"per_device_train_batch_size is {per_device_batch_size}; make them equal (or pass "
            "the cache path and let the trainer build the dataset)"
        )
    place = (dataset.partition.rank, dataset.partition.world_size)  # the data-parallel place
    if place != (rank, world_size):
        problems.append(
            f"the CacheDataset is rank {place[0]} of {place[1]} but this process "
            f"is rank {rank} of {world_size}; pass the cache path under torchrun/accelerate"
        )
    if problems:
        raise ConfigError(problems)


class CacheBatchLoader(DataLoader):  # type: ignore[type-arg]
    """A DataLoader over a :class:`CacheDataset`'s own batches, as Trainer drives loaders.

    Args:
        dataset: the cache dataset (it collates; this loader does not batch again).
        num_workers: DataLoader workers (0 on CPU: DESIGN §4).
        skip: batches of the epoch already trained (a resumed epoch); 0 = from the start.
    """

    def __init__(self, dataset: CacheDataset, num_workers: int = 0, skip: int = 0):
        super().__init__(dataset, batch_size=None, num_workers=num_workers)
        self.cache_dataset = dataset
        self.skip = skip

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (Trainer calls it at every pass)."""
        self.cache_dataset.set_epoch(epoch)
        if self.skip:
            self.cache_dataset.resume_at(self.skip)

    def skipping(self, num_batches: int) -> CacheBatchLoader:
        """This loader starting at batch ``num_batches`` of the epoch set next."""
        return CacheBatchLoader(self.cache_dataset, self.num_workers, skip=num_batches)

    def __len__(self) -> int:
        """Batches per epoch (the skipped ones included: Trainer counts from the start)."""
        return len(self.cache_dataset)


def num_cache_examples(dataset: CacheDataset) -> int:
    """Examples one epoch trains on (every rank together)."""
    return int(dataset.num_examples)
