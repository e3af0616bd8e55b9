"""The order of one epoch, from the index alone: shard order, runs and the mixing buffer.

:func:`plan_epoch` turns one rank's :class:`ShardSelection` list into an :class:`EpochPlan`:
a pure function of ``(seed, epoch, rank)`` (see :mod:`cachebrew.cache.feed.dataset` for the rules),
so a resumed pass knows its batches without reading any data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_DECODED_ITEMSIZE = 4  # features decode to float32 / int64 ids (the run size is an estimate)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch, from the index alone.

    Attributes:
        stream: (S, 2) int64 ``(shard, row)`` in read order (padding repeats appended).
        group_starts: (G + 1,) stream positions where read groups (runs) start, then S.
        order: (M,) the stream position of each output position.
    """

    stream: np.ndarray
    group_starts: np.ndarray
    order: np.ndarray


@dataclass(frozen=True)
class ShardSelection:
    """The selected rows of one shard (ascending) and the row span of one run."""

    shard: int
    rows: np.ndarray
    run_rows: int


def mixing_order(num_items: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The output order of a shuffle buffer over ``num_items`` streamed items.

    Fill the buffer, then for each new item emit a uniformly chosen buffered one and put the
    new item in its place; at the end emit the rest in a random order. Returns (n,) positions.
    """
    size = min(buffer_size, num_items)
    buffer = list(range(size))
    picks = rng.integers(0, size, size=num_items - size).tolist() if size else []
    out = []
    for incoming, slot in zip(range(size, num_items), picks, strict=True):
        out.append(buffer[slot])
        buffer[slot] = incoming
    out.extend(buffer[i] for i in rng.permutation(size).tolist())
    return np.asarray(out, dtype=np.int64)


def plan_epoch(
    selections: Sequence[ShardSelection],
    *,
    seed: int,
    epoch: int,
    rank: int,
    shuffle: bool,
    buffer_size: int,
    num_examples: int,
) -> EpochPlan:
    """Shard order, run order and mixing buffer of one epoch, fitted to ``num_examples``.

    Args:
        selections: this rank's shards and selected rows.
        seed, epoch, rank: seed ``numpy.random.default_rng([seed, epoch, rank])``.
        shuffle: False keeps shard and row order and skips the mixing buffer.
        buffer_size: examples in the mixing buffer.
        num_examples: output length; shorter orders repeat their start, longer are cut.
    """
    rng = np.random.default_rng([seed, epoch, rank])
    shard_order = rng.permutation(len(selections)) if shuffle else range(len(selections))
    pieces: list[np.ndarray] = []
    for i in shard_order:
        selection = selections[i]
        run_ids = selection.rows // selection.run_rows
        runs = np.split(selection.rows, np.flatnonzero(np.diff(run_ids)) + 1)
        if shuffle:
            runs = [runs[j] for j in rng.permutation(len(runs))]
        pieces += [np.stack([np.full_like(run, selection.shard), run], axis=1) for run in runs]
    stream = np.concatenate(pieces).astype(np.int64)
    sizes = [len(p) for p in pieces]
    order = mixing_order(len(stream), buffer_size, rng) if shuffle else np.arange(len(stream))
    if num_examples < len(order):
        order = order[:num_examples]
    elif num_examples > len(order):  # pad: repeat from the start of this rank's order
        repeats = order[np.arange(num_examples - len(order)) % len(order)]
        extra = np.arange(len(stream), len(stream) + len(repeats))
        stream = np.concatenate([stream, stream[repeats]])
        order = np.concatenate([order, extra])
        group = max(sizes)
        sizes += [min(group, len(repeats) - s) for s in range(0, len(repeats), group)]
    group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return EpochPlan(stream=stream, group_starts=group_starts, order=order)


def run_rows(manifest: Mapping[str, Any], window_bytes: int) -> int:
    """Rows per contiguous run: about ``window_bytes`` of decoded features (cache-wide mean)."""
    arrays = manifest["arrays"]
    total = sum(info["rows"] * info["width"] for info in arrays.values()) * _DECODED_ITEMSIZE
    per_example = max(1, total // max(1, int(manifest["totals"]["num_examples"])))
    return max(1, window_bytes // per_example)
