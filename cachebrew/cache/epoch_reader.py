"""Decode the examples of chosen batches of an :class:`~cachebrew.cache.order.EpochPlan`.

:class:`EpochReader` decodes runs chunk-aligned, in stream order, one read per consecutive
chunk range, through a :class:`ChunkCache` (decoded chunks shared by neighbouring runs, least
recently used evicted past a budget).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cachebrew.cache.buffers import BufferPool
from cachebrew.cache.codecs import decode, stored_dtype
from cachebrew.cache.order import EpochPlan
from cachebrew.cache.shard import ShardReader

if TYPE_CHECKING:  # reader.py streams through this module
    from cachebrew.cache.reader import CacheReader

# Decoded blocks kept for reuse (per stored dtype): enough for the chunk cache's budget of
# 4 windows plus the blocks pending examples still view.
_REUSED_BLOCKS = 16


class ChunkCache:
    """Decoded chunks of the arrays of a cache, least recently used evicted past a budget.

    Args:
        budget_bytes: decoded bytes kept between read groups (a group may exceed it).
        pool: a ThreadPoolExecutor decoding the chunks of one read, or None.

    Decoded blocks come from a :class:`BufferPool`: a block is decoded into again only after
    it was evicted and no example or batch still holds a view of it.
    """

    def __init__(self, budget_bytes: int, pool: Any = None):
        self.budget_bytes = budget_bytes
        self.pool = pool
        self.blocks = BufferPool(per_key=_REUSED_BLOCKS)
        self.decoded_chunks = 0
        self._chunks: OrderedDict[tuple[int, str, int], np.ndarray] = OrderedDict()
        self._bytes = 0

    def load(self, shard: ShardReader, name: str, starts: np.ndarray, stops: np.ndarray) -> None:
        """Decode the chunks that rows ``[starts[i], stops[i])`` overlap and are not cached
        (kept in the stored dtype: the cast happens where the batch is built)."""
        info = shard.meta["arrays"][name]
        chunk_rows, total_rows = info["chunk_rows"], info["rows"]
        wanted: set[int] = set()
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            if stop > start:
                wanted.update(range(start // chunk_rows, (stop - 1) // chunk_rows + 1))
        missing = sorted(c for c in wanted if (shard.index, name, c) not in self._chunks)
        for first, last in _consecutive_ranges(missing):
            lo, hi = first * chunk_rows, min((last + 1) * chunk_rows, total_rows)
            block = shard.read_rows(name, lo, hi, pool=self.pool, blocks=self.blocks)
            for chunk in range(first, last + 1):
                part = block[(chunk - first) * chunk_rows : (chunk - first + 1) * chunk_rows]
                self._chunks[(shard.index, name, chunk)] = part
                self._bytes += part.nbytes
            self.decoded_chunks += last - first + 1

    def rows(
        self, shard: ShardReader, name: str, start: int, stop: int, *, copy: bool = True
    ) -> np.ndarray:
        """Rows ``[start, stop)`` of a loaded array: a new array, or with ``copy=False`` a
        view into the decoded chunk when the rows lie in one chunk (the view keeps its chunk
        alive after eviction; a decoded chunk is never written again, so views stay valid)."""
        info = shard.meta["arrays"][name]
        chunk_rows = info["chunk_rows"]
        if stop <= start:
            return np.empty((0, info["width"]), dtype=stored_dtype(info["stored_dtype"]))
        parts = []
        for chunk in range(start // chunk_rows, (stop - 1) // chunk_rows + 1):
            key = (shard.index, name, chunk)
            self._chunks.move_to_end(key)
            base = chunk * chunk_rows
            parts.append(self._chunks[key][max(start - base, 0) : stop - base])
        if len(parts) > 1:
            return np.concatenate(parts)
        return parts[0].copy() if copy else parts[0]

    def trim(self) -> None:
        """Evict least recently used chunks down to the budget."""
        while self._bytes > self.budget_bytes and self._chunks:
            _, part = self._chunks.popitem(last=False)
            self._bytes -= part.nbytes


def _consecutive_ranges(values: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``[1, 2, 3, 7, 8] -> (1, 3), (7, 8)``."""
    start = previous = None
    for value in values:
        if previous is None or value != previous + 1:
            if start is not None:
                yield start, previous  # type: ignore[misc]
            start = value
        previous = value
    if start is not None:
        yield start, previous  # type: ignore[misc]


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
        """The examples of each batch index, in order; only their chunks are decoded."""
        plan = self.plan
        needed = np.zeros(len(plan.stream), dtype=bool)
        for j in indices:
            needed[plan.order[j * batch_size : (j + 1) * batch_size]] = True
        pending: dict[int, dict[str, Any]] = {}
        next_group = 0
        for j in indices:
            positions = plan.order[j * batch_size : (j + 1) * batch_size].tolist()
            last_group = int(np.searchsorted(plan.group_starts, max(positions), side="right")) - 1
            for group in range(next_group, last_group + 1):
                self._decode_group(group, needed, pending)
            next_group = max(next_group, last_group + 1)
            yield [pending.pop(p) for p in positions]

    def _decode_group(
        self, group: int, needed: np.ndarray, pending: dict[int, dict[str, Any]]
    ) -> None:
        start, stop = self.plan.group_starts[group], self.plan.group_starts[group + 1]
        positions = np.arange(start, stop)[needed[start:stop]]
        items = self.plan.stream[positions]  # (n, 2) (shard, row)
        for shard_index in np.unique(items[:, 0]).tolist():
            mine = items[:, 0] == shard_index
            shard = self.reader.shard(shard_index)
            rows = items[mine, 1]
            spans = {}
            for name in self.arrays:
                offsets, lengths = shard.rows[name.removesuffix(".scale")]
                spans[name] = (offsets[rows], offsets[rows] + lengths[rows])
                self.cache.load(shard, name, *spans[name])
            for i, (position, row) in enumerate(zip(positions[mine], rows, strict=True)):
                features = {  # views into the chunks unless cast (no per-example copy)
                    name: self.cache.rows(shard, name, int(lo[i]), int(hi[i]), copy=self.cast)
                    for name, (lo, hi) in spans.items()
                }
                if self.cast:
                    features = _cast(shard, features)
                pending[int(position)] = shard.record(int(row), features)
        self.cache.trim()


def _cast(shard: ShardReader, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stored rows -> float32 (int64 ids), int8 scaled by its ``.scale`` companion."""
    dtypes = shard.meta["arrays"]
    return {
        name: decode(value, stored.get(f"{name}.scale"), dtypes[name]["dtype"])
        for name, value in stored.items()
        if not name.endswith(".scale")
    }
