"""Decode the examples of chosen batches of an :class:`~cachebrew.cache.read.order.EpochPlan`.

:class:`EpochReader` decodes runs chunk-aligned, in stream order, one decode per chunk into a
reused buffer, through a :class:`ChunkCache` (decoded chunks shared by neighbouring runs, least
recently used evicted past a budget; with a decode pool, the runs a batch needs and the next
one decode in the background).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cachebrew.cache.format.codecs import decode, stored_dtype
from cachebrew.cache.read.buffers import BufferPool
from cachebrew.cache.read.order import EpochPlan
from cachebrew.cache.read.shard import ShardReader

if TYPE_CHECKING:  # reader.py streams through this module
    from cachebrew.cache.read.reader import CacheReader

# Decoded chunk buffers kept for reuse per chunk shape, if no pool is given.
_REUSED_BLOCKS = 16


class ChunkCache:
    """Decoded chunks of the arrays of a cache, least recently used evicted past a budget.

    Args:
        budget_bytes: decoded bytes kept between read groups (a group may exceed it).
        pool: a ThreadPoolExecutor decoding chunks in the background, or None (decode in the
            calling thread when a chunk is loaded).
        blocks: where decoded chunks live; pass the same pool to every epoch of a dataset so
            the next epoch decodes into the memory the last one freed (None: a pool of this
            cache's own).

    Each chunk is decoded into its own buffer from ``blocks``: a buffer is decoded into again
    only after its chunk was evicted and no example or batch still holds a view of it. With a
    ``pool``, :meth:`load` only submits the decodes and :meth:`columns` waits for the chunk it
    needs, so chunks of the next read group decode while the caller copies this one's.
    """

    def __init__(self, budget_bytes: int, pool: Any = None, blocks: BufferPool | None = None):
        self.budget_bytes = budget_bytes
        self.pool = pool
        self.blocks = BufferPool(per_key=_REUSED_BLOCKS) if blocks is None else blocks
        self._chunks: OrderedDict[tuple[int, str, int], np.ndarray | Future[np.ndarray]] = (
            OrderedDict()
        )
        self._bytes = 0

    def load(self, shard: ShardReader, name: str, starts: np.ndarray, stops: np.ndarray) -> None:
        """Decode (or with a pool, start decoding) the chunks that rows ``[starts[i],
        stops[i])`` overlap and are not cached (kept in the stored dtype: the cast happens
        where the batch is built)."""
        info = shard.meta["arrays"][name]
        chunk_rows, total_rows = info["chunk_rows"], info["rows"]
        itemsize = stored_dtype(info["stored_dtype"]).itemsize
        wanted: set[int] = set()
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            if stop > start:
                wanted.update(range(start // chunk_rows, (stop - 1) // chunk_rows + 1))
        for chunk in sorted(c for c in wanted if (shard.index, name, c) not in self._chunks):
            lo, hi = chunk * chunk_rows, min((chunk + 1) * chunk_rows, total_rows)
            if self.pool is None:
                part: Any = shard.read_rows(name, lo, hi, blocks=self.blocks)
            else:
                part = self.pool.submit(shard.read_rows, name, lo, hi, blocks=self.blocks)
            self._chunks[(shard.index, name, chunk)] = part
            self._bytes += (hi - lo) * info["width"] * itemsize

    def columns(
        self,
        shard: ShardReader,
        name: str,
        starts: Sequence[int],
        stops: Sequence[int],
        *,
        copy: bool = True,
    ) -> list[np.ndarray]:
        """Per span ``[starts[i], stops[i])`` the rows of a loaded array: new arrays, or with
        ``copy=False`` views into the decoded chunks for spans inside one chunk (a view keeps
        its chunk alive after eviction; a decoded chunk is never written again, so views stay
        valid). Each chunk is looked up (and waited for) once per call.

        Raises:
            CacheCorruptError: a chunk decoded in the background failed its check.
        """
        info = shard.meta["arrays"][name]
        chunk_rows = info["chunk_rows"]
        blocks: dict[int, np.ndarray] = {}

        def block(chunk: int) -> np.ndarray:
            if chunk not in blocks:
                key = (shard.index, name, chunk)
                self._chunks.move_to_end(key)
                part = self._chunks[key]
                if isinstance(part, Future):
                    part = self._chunks[key] = part.result()
                blocks[chunk] = part
            return blocks[chunk]

        out = []
        for start, stop in zip(starts, stops, strict=True):
            first, last = start // chunk_rows, (stop - 1) // chunk_rows
            if stop <= start:
                dtype = stored_dtype(info["stored_dtype"])
                out.append(np.empty((0, info["width"]), dtype=dtype))
            elif first == last:
                base = first * chunk_rows
                view = block(first)[start - base : stop - base]
                out.append(view.copy() if copy else view)
            else:
                out.append(
                    np.concatenate(
                        [
                            block(c)[max(start - c * chunk_rows, 0) : stop - c * chunk_rows]
                            for c in range(first, last + 1)
                        ]
                    )
                )
        return out

    def trim(self) -> None:
        """Evict least recently used chunks down to the budget."""
        while self._bytes > self.budget_bytes and self._chunks:
            _, part = self._chunks.popitem(last=False)
            if isinstance(part, Future):
                part = part.result()  # surface its error; its memory returns to the pool
            self._bytes -= part.nbytes


class EpochReader:
    """Decodes the examples of chosen batches of one :class:`EpochPlan`, in stream order.

    Args:
        arrays: the stored arrays to read (int8 arrays need their ``.scale`` listed too when
            ``cast`` is False).
        cast: True gives float32 features (int64 ids), as :meth:`CacheReader.get` does; False
            keeps the stored dtype for a collate that casts while it pads.
    """

    def __init__(
        self,
        reader: CacheReader,
        plan: EpochPlan,
        arrays: Sequence[str],
        cache: ChunkCache,
        *,
        cast: bool = True,
    ):
        self.reader, self.plan, self.arrays, self.cache = reader, plan, tuple(arrays), cache
        self.cast = cast

    def batches(self, indices: Sequence[int], batch_size: int) -> Iterator[list[dict[str, Any]]]:
        """The examples of each batch index, in order; only their chunks are decoded.

        With a decode pool, every read group a batch needs is submitted before the first of
        them is taken (an epoch's first batch needs up to ``buffer_size`` examples: they decode
        in the pool while the caller takes the earlier groups), and the group after is
        submitted once they are taken, so it decodes while the caller pads this batch. Which
        examples form which batch, and their values, do not depend on it.
        """
        plan = self.plan
        needed = np.zeros(len(plan.stream), dtype=bool)
        for j in indices:
            needed[plan.order[j * batch_size : (j + 1) * batch_size]] = True
        pending: dict[int, dict[str, Any]] = {}
        loaded: dict[int, list[_ShardPart]] = {}
        num_groups = len(plan.group_starts) - 1
        next_group = 0
        background = self.cache.pool is not None
        for j in indices:
            positions = plan.order[j * batch_size : (j + 1) * batch_size].tolist()
            last_group = int(np.searchsorted(plan.group_starts, max(positions), side="right")) - 1
            if last_group >= next_group:
                if background:  # every group this batch needs decodes while earlier ones are taken
                    for group in range(next_group, last_group + 1):
                        if group not in loaded:
                            loaded[group] = self._load(group, needed)
                for group in range(next_group, last_group + 1):
                    parts = loaded.pop(group, None)
                    self._take(self._load(group, needed) if parts is None else parts, pending)
                    if not background:
                        self.cache.trim()
                if background:
                    self.cache.trim()  # after the takes: untaken chunks must stay cached
                    if last_group + 1 < num_groups:  # the next group decodes while this pads
                        loaded[last_group + 1] = self._load(last_group + 1, needed)
            next_group = max(next_group, last_group + 1)
            yield [pending.pop(p) for p in positions]

    def _load(self, group: int, needed: np.ndarray) -> list[_ShardPart]:
        """Load the chunks of a group's needed examples, per shard; what :meth:`_take` needs."""
        start, stop = self.plan.group_starts[group], self.plan.group_starts[group + 1]
        positions = np.arange(start, stop)[needed[start:stop]]
        items = self.plan.stream[positions]  # (n, 2) (shard, row)
        parts = []
        for shard_index in np.unique(items[:, 0]).tolist():
            mine = items[:, 0] == shard_index
            shard = self.reader.shard(shard_index)
            rows = items[mine, 1]
            spans = {}
            for name in self.arrays:
                offsets, lengths = shard.rows[name.removesuffix(".scale")]
                lo = offsets[rows]
                spans[name] = (lo, lo + lengths[rows])
                self.cache.load(shard, name, *spans[name])
            parts.append(_ShardPart(shard, positions[mine].tolist(), rows.tolist(), spans))
        return parts

    def _take(self, parts: list[_ShardPart], pending: dict[int, dict[str, Any]]) -> None:
        """The example dicts of loaded parts, into ``pending`` by stream position."""
        for part in parts:
            shard = part.shard
            names = list(part.spans)
            columns = [  # views into the chunks unless cast (no per-example copy)
                self.cache.columns(shard, name, lo.tolist(), hi.tolist(), copy=self.cast)
                for name, (lo, hi) in part.spans.items()
            ]
            per_example = zip(*columns, strict=True) if columns else [()] * len(part.rows)
            for position, row, values in zip(part.positions, part.rows, per_example, strict=True):
                features = dict(zip(names, values, strict=True))
                if self.cast:
                    features = _cast(shard, features)
                pending[position] = shard.record(row, features)


@dataclass(frozen=True)
class _ShardPart:
    """The examples of one shard in one read group: stream positions, index rows, and per
    array the row spans ``(starts, stops)``."""

    shard: ShardReader
    positions: list[int]
    rows: list[int]
    spans: dict[str, tuple[np.ndarray, np.ndarray]]


def _cast(shard: ShardReader, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stored rows -> float32 (int64 ids), int8 scaled by its ``.scale`` companion."""
    dtypes = shard.meta["arrays"]
    return {
        name: decode(value, stored.get(f"{name}.scale"), dtypes[name]["dtype"])
        for name, value in stored.items()
        if not name.endswith(".scale")
    }
