"""Stream collated, TextBrewer-shaped batches from a teacher cache: :class:`CacheDataset`.

**Order (a pure function of seed, epoch, rank and the selected example ids in corpus order;
:mod:`cachebrew.cache.read.order`).** The selected examples, in corpus order, are cut into
*runs* of ``run_examples`` consecutive examples; run i belongs to rank ``i % world_size``. Each
epoch a rank permutes its runs and reads them in that order: the *stream*. A mixing buffer of
``buffer_size`` examples is then simulated over the stream with ``numpy.random.default_rng([seed,
epoch, rank])``: the output order is a permutation of stream positions known before any data is
read. ``shuffle=False`` gives corpus order. The order does not depend on the cache's layout
(features, dtypes, codecs, logits mode, shard and chunk sizes: two caches of one corpus give the
same batches), nor on ``batch_size``, ``teacher_cache``, ``window_bytes`` or DataLoader
workers. Because it is known up front, :meth:`CacheDataset.resume_at` starts mid-epoch without
decoding the skipped batches.

**Reading.** Runs are decoded in stream order, chunk-aligned and one Zarr read per consecutive
chunk range (never per-example random gathers); a small LRU of decoded chunks serves chunks
shared by neighbouring runs. Decoded examples wait in memory until their batch is emitted (at
most about ``buffer_size`` examples: that is the mixing buffer's memory). Only the examples
of batches this process yields are decoded, so a resumed pass or a DataLoader worker decodes
only the chunks its own batches touch.

**Ranks.** Every rank yields the same number of batches: with ``drop_last=False`` ranks with
fewer examples repeat examples from the start of their own epoch order up to the largest
rank's count (as ``DistributedSampler`` pads), with ``drop_last=True`` every rank keeps only
the smallest rank's count (a different subset each epoch when shuffling) and a trailing
partial batch is dropped.

**DataLoader workers.** ``DataLoader(dataset, batch_size=None, num_workers=k)``: worker w yields
the batches ``start + w, start + w + k, ...``, which the DataLoader's round-robin returns in the
same order as without workers, so the batch sequence (and resuming) does not depend on k. On a
2-core CPU workers slow training down (DESIGN §4): use the dataset directly or ``num_workers=0``.

**Example ids** travel in ``batch["example_ids"]`` (a top-level key next to ``teacher``,
``student`` and ``teacher_cache``): the distiller reads only those three keys, so the ids reach
neither a model (online mode feeds ``batch["teacher"]`` to the teacher as keyword arguments)
nor the identity teacher adaptor (which rejects keys outside ``ADAPTOR_KEYS``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from cachebrew.cache.feed.collate import CollateOptions, collate_examples, reader_layout
from cachebrew.cache.feed.gpu_feed import PinnedPool
from cachebrew.cache.feed.partition import cache_partition
from cachebrew.cache.feed.prefetch import Prefetcher
from cachebrew.cache.read.buffers import BufferPool
from cachebrew.cache.read.epoch_reader import ChunkCache, EpochReader
from cachebrew.cache.read.order import (
    DEFAULT_RUN_EXAMPLES,
    EpochPlan,
    corpus_items,
    cut_runs,
    plan_epoch,
    rank_runs,
)
from cachebrew.cache.read.reader import DEFAULT_WINDOW_BYTES, CacheReader, open_cache
from cachebrew.errors import CacheMismatchError, ConfigError

logger = logging.getLogger(__name__)


class CacheDataset(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Collated TextBrewer-shaped batches streamed from a cache (module docstring).

    Args:
        cache: a cache path / fsspec URL, or an open :class:`CacheReader`.
        batch_size: examples per batch (B).
        seed: the order of epoch e is a pure function of ``(seed, e, rank)``.
        shuffle: shard, run and mixing-buffer shuffling; False gives corpus order.
        buffer_size: examples in the mixing buffer (1 = runs only); also bounds the decoded
            examples held in memory.
        drop_last: drop a trailing partial batch (and truncate ranks to the smallest).
        example_ids: the examples to use (e.g. a train split); None = all.
        student_items: ``example_id -> {input_ids: [...], [attention_mask, token_type_ids,
            ...], [labels]}`` for a student with another tokenizer; None = the cache's input
            ids (and labels).
        pad_id: padding id of input ids.
        sep_id: the ``[SEP]`` id, to derive ``token_type_ids`` (0 up to and including the
            first ``[SEP]``, then 1) when ``with_token_type_ids``.
        with_token_type_ids: add ``token_type_ids`` to the model inputs.
        teacher_cache: False = online mode: no ``teacher_cache`` and no feature decoding; the
            ``teacher`` part holds the teacher's model inputs so a live teacher sees the same.
        rank, world_size: this process's place among the data-parallel ranks.
        partition: how the ranks share the cache (:mod:`cachebrew.cache.feed.partition`):
            ``"shards"`` (run i to rank i % world_size, each rank in its own order) or
            ``"global_batches"`` (each rank its share of every batch of the one-process order).
        num_classes: the logits width V to rebuild top-k rows to (default: the cache's
            ``vocab_size``).
        window_bytes: the decoded chunk cache's budget is ``4 * window_bytes`` (reading only:
            the order does not depend on it).
        run_examples: consecutive examples (in corpus order) read together and shuffled as a
            unit before the mixing buffer; part of the order, like ``seed``.
        prefetch: batches decoded and collated ahead in a background thread while the caller
            trains on the current one (0 = none; not used inside DataLoader workers). The
            thread runs on into the next epoch (:mod:`cachebrew.cache.feed.prefetch`), so an
            epoch's first batch does not wait for the mixing buffer to fill. The batches and
            their order do not change. ``distill`` uses 1 on CPU and GPU: on the 2-core CPU
            benchmark it cut the data wait from 3.9 % to 0.3 % (BENCHMARKS.md).
        device: where the student trains (``"cpu"``, ``"cuda:0"``...; None = CPU). On CUDA,
            hidden states and attention leave in their stored dtype from pinned memory
            (non-blocking) and are cast to float32 on the GPU; on the CPU the cast is fused
            into the padding copy. Either way the batch values are the same.
        decode_threads: threads decoding chunks (the next read group in the background)
            and padding the arrays of a batch in parallel (the codecs and copies release the
            GIL); None = 2 on CUDA, 1 (the calling thread) on the CPU, where a second thread
            competes with the student (docs/benchmarks-history.md, "Reader against its codec").

    Raises:
        ConfigError: an invalid argument (all problems at once).
        CacheMismatchError: unknown example ids, ids missing from ``student_items``, an empty
            selection, a rank without examples, or ambiguous reduced attention.
    """

    teacher_forwards: int = 0  # the cache replaces every teacher forward

    def __init__(
        self,
        cache: str | os.PathLike[str] | CacheReader,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = 1024,
        drop_last: bool = False,
        example_ids: Sequence[str] | None = None,
        student_items: Mapping[str, dict[str, Any]] | None = None,
        pad_id: int = 0,
        sep_id: int | None = None,
        with_token_type_ids: bool = False,
        teacher_cache: bool = True,
        rank: int = 0,
        world_size: int = 1,
        partition: str = "shards",
        num_classes: int | None = None,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        run_examples: int = DEFAULT_RUN_EXAMPLES,
        prefetch: int = 0,
        device: str | torch.device | None = None,
        decode_threads: int | None = None,
    ):
        _check_arguments(
            batch_size, seed, buffer_size, rank, world_size, window_bytes, run_examples, prefetch
        )
        self.partition = cache_partition(partition, rank, world_size)
        local_batch = self.partition.local_batch(batch_size)
        device = None if device is None else str(torch.device(device))
        on_gpu = device is not None and device.startswith("cuda")
        if decode_threads is None:
            decode_threads = 2 if on_gpu else 1
        if not isinstance(decode_threads, int) or decode_threads < 1:
            raise ConfigError(f"CacheDataset: decode_threads={decode_threads!r}: expected >= 1")
        self.decode_threads = decode_threads
        if with_token_type_ids and sep_id is None:
            raise ConfigError("with_token_type_ids=True needs sep_id (the [SEP] token id)")
        self.reader = cache if isinstance(cache, CacheReader) else open_cache(cache)
        self.batch_size, self.seed, self.shuffle = local_batch, seed, shuffle
        self.buffer_size, self.drop_last = buffer_size, drop_last
        self.global_batch_size = batch_size  # the partition's cut reads batches of this size
        # the rank whose selection and order are computed (rank 0 of 1 for global batches)
        self.rank, self.world_size = self.partition.order_rank()
        self.window_bytes, self.run_examples = window_bytes, run_examples
        self.prefetch = prefetch
        self.layout = reader_layout(self.reader, num_classes) if teacher_cache else None
        # The packed CUDA path's reused pinned buffers: two batches' arrays in flight.
        arrays = len(self.layout.stored_arrays) if self.layout is not None else 0
        pinned = PinnedPool(slots=max(2 * arrays, 2)) if on_gpu else None
        self.options = CollateOptions(
            pad_id, sep_id, with_token_type_ids, device if on_gpu else None, pinned=pinned
        )
        self.student_items = student_items
        counts, self._runs = self._select(example_ids)
        self.num_examples = min(counts) if drop_last else max(counts)
        self._num_batches = _batch_count(self.num_examples, batch_size, drop_last)
        if student_items is not None:
            _check_student_items(self.reader, self._runs, student_items)
        self.epoch = 0
        self._resume_position = 0
        # Memory reused from one epoch to the next (never while a batch or view still uses
        # it): decoded chunks, up to twice the chunk cache's budget (at least 32 MiB), and
        # padded batches.
        kept = max(8 * window_bytes, 32 * 2**20)
        self._chunk_blocks = BufferPool(per_key=1024, max_bytes=kept)
        self._batch_buffers = BufferPool()
        self._prefetcher: Prefetcher | None = None
        logger.info(
            "CacheDataset %s: rank %d/%d, %d examples, %d batches of %d per epoch",
            self.reader.path,
            rank,
            world_size,
            self.num_examples,
            self._num_batches,
            batch_size,
        )

    # ------------------------------------------------------------------ selection

    def _select(self, example_ids: Sequence[str] | None) -> tuple[list[int], list[np.ndarray]]:
        """Examples per rank, and this rank's runs (each (n, 2) ``(shard, row)``)."""
        reader, world = self.reader, self.world_size
        if example_ids is None:
            sizes = [int(s["num_examples"]) for s in reader.manifest["shards"]]
            rows = {k: np.arange(size) for k, size in enumerate(sizes)}
        else:
            rows = _rows_of(reader, set(example_ids))
        runs = cut_runs(corpus_items(rows), self.run_examples)
        counts = [sum(len(run) for run in rank_runs(runs, r, world)) for r in range(world)]
        if sum(counts) == 0:
            raise CacheMismatchError(f"no examples selected from the cache {reader.path}")
        empty = [r for r, count in enumerate(counts) if count == 0]
        if empty:
            raise CacheMismatchError(
                f"ranks {empty} of world_size {world} get no examples: the {sum(counts)} "
                f"selected examples of {reader.path} make {len(runs)} runs of run_examples="
                f"{self.run_examples} (run i goes to rank i % world_size); lower run_examples "
                "or use fewer ranks"
            )
        return counts, rank_runs(runs, self.rank, world)

    # ------------------------------------------------------------------ epochs

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch`` for the next iteration (clears ``resume_at``)."""
        self.epoch = int(epoch)
        self._resume_position = 0

    def __len__(self) -> int:
        """Batches per epoch for this rank (all DataLoader workers together)."""
        return self._num_batches

    def resume_at(self, position: int) -> None:
        """Make the next iteration start at batch ``position`` of the current epoch, without
        decoding the skipped batches. Call after :meth:`set_epoch`.

        The next ``__iter__`` consumes it; DataLoader workers iterate copies, so in the main
        process it stays set until the next :meth:`set_epoch` (which the training loop calls
        at every pass).
        """
        if not 0 <= position <= self._num_batches:
            raise ConfigError(
                f"resume_at({position}): the position must be in [0, {self._num_batches}], the "
                "batches per epoch of this dataset; was the checkpoint made with the same "
                "batch_size, example_ids and world_size?"
            )
        self._resume_position = int(position)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's order of ``epoch`` (default: the current one), from the index alone."""
        return self.partition.cut(self._order(epoch), self.global_batch_size, self._num_batches)

    def _order(self, epoch: int | None) -> EpochPlan:
        return plan_epoch(
            self._runs,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            rank=self.rank,
            shuffle=self.shuffle,
            buffer_size=self.buffer_size,
            num_examples=self.num_examples,
        )

    def example_order(self, epoch: int | None = None) -> list[str]:
        """The example ids this rank yields in ``epoch``, in order (no data is decoded)."""
        plan = self.plan(epoch)
        kept = self._num_batches * self.batch_size
        items = plan.stream[plan.order[:kept]]
        return [self.reader.shard(s).example_ids[r] for s, r in items.tolist()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The batches of the current epoch from the resume position (this worker's share)."""
        start, self._resume_position = self._resume_position, 0
        worker = torch.utils.data.get_worker_info()
        if self.prefetch and worker is None:
            yield from self._prefetching().epoch(self.epoch, start)
            return
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        yield from self._batches(self.epoch, range(start + worker_id, len(self), num_workers))

    def _batches(self, epoch: int, indices: range) -> Iterator[dict[str, Any]]:
        """The collated batches ``indices`` of ``epoch`` (holding no reference to the dataset,
        so a prefetch thread that runs ahead does not keep it alive)."""
        options = dataclasses.replace(self.options, buffers=self._batch_buffers)
        reading = _Reading(
            self.reader,
            self.layout,
            options,
            self.student_items,
            self.decode_threads,
            4 * self.window_bytes,
            self._chunk_blocks,
        )
        return reading.batches(self.plan(epoch), indices, self.batch_size)

    def _prefetching(self) -> Prefetcher:
        """The prefetcher of this dataset (made on first use, closed when it is collected)."""
        if self._prefetcher is None or self._prefetcher.depth != self.prefetch:
            if self._prefetcher is not None:
                self._prefetcher.close()
            ref = weakref.ref(self)

            def make(epoch: int, start: int) -> Iterator[dict[str, Any]] | None:
                dataset = ref()
                return (
                    None if dataset is None else dataset._batches(epoch, range(start, len(dataset)))
                )

            self._prefetcher = Prefetcher(make, self.prefetch)
            weakref.finalize(self, self._prefetcher.close)
        return self._prefetcher


@dataclasses.dataclass(frozen=True)
class _Reading:
    """What one epoch's batches are read with (not the dataset itself: see ``_batches``)."""

    reader: CacheReader
    layout: Any
    options: CollateOptions
    student_items: Mapping[str, dict[str, Any]] | None
    decode_threads: int
    chunk_budget: int  # decoded bytes kept between read groups
    chunk_blocks: BufferPool  # the memory decoded chunks reuse from one epoch to the next

    def batches(self, plan: EpochPlan, indices: range, batch_size: int) -> Iterator[dict[str, Any]]:
        arrays = self.layout.stored_arrays if self.layout is not None else ()
        with contextlib.ExitStack() as stack:
            pool = None
            if self.decode_threads > 1:
                pool = stack.enter_context(ThreadPoolExecutor(self.decode_threads))
            chunks = ChunkCache(self.chunk_budget, pool, self.chunk_blocks)
            reader = EpochReader(self.reader, plan, arrays, chunks, cast=False)
            options = dataclasses.replace(self.options, pool=pool)
            for examples in reader.batches(indices, batch_size):
                yield collate_examples(examples, self.layout, options, self.student_items)


def _check_arguments(
    batch_size: int,
    seed: int,
    buffer_size: int,
    rank: int,
    world_size: int,
    window_bytes: int,
    run_examples: int,
    prefetch: int,
) -> None:
    problems = []
    for name, value, minimum in (
        ("prefetch", prefetch, 0),
        ("batch_size", batch_size, 1),
        ("seed", seed, 0),
        ("buffer_size", buffer_size, 1),
        ("world_size", world_size, 1),
        ("rank", rank, 0),
        ("window_bytes", window_bytes, 1),
        ("run_examples", run_examples, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            problems.append(f"{name}={value!r}: expected an integer >= {minimum}")
    if isinstance(rank, int) and isinstance(world_size, int) and rank >= world_size >= 1:
        problems.append(f"rank={rank} must be below world_size={world_size}")
    if problems:
        raise ConfigError([f"CacheDataset: {p}" for p in problems])


def _batch_count(num_examples: int, batch_size: int, drop_last: bool) -> int:
    count = num_examples // batch_size if drop_last else -(-num_examples // batch_size)
    if count == 0:
        raise CacheMismatchError(
            f"{num_examples} examples per rank make no full batch of {batch_size} with "
            "drop_last=True; lower batch_size or set drop_last=False"
        )
    return count


def _rows_of(reader: CacheReader, wanted: set[str]) -> dict[int, np.ndarray]:
    """Selected rows of every shard; unknown ids are an error listing a few."""
    rows, unknown = reader.rows_of(wanted)
    if unknown:
        raise CacheMismatchError(
            f"{len(unknown)} of the {len(wanted)} example_ids are not in the cache "
            f"{reader.path}, e.g. {sorted(unknown)[:5]}; was it precomputed from the same corpus?"
        )
    return rows


def _check_student_items(
    reader: CacheReader, runs: Sequence[np.ndarray], items: Mapping[str, Any]
) -> None:
    missing = [
        example_id
        for run in runs
        for example_id in (reader.shard(s).example_ids[r] for s, r in run.tolist())
        if example_id not in items
    ]
    if missing:
        raise CacheMismatchError(
            f"student_items lacks {len(missing)} selected examples, e.g. {missing[:5]}; "
            "tokenize every example the run uses (or pass example_ids= for a subset)"
        )
