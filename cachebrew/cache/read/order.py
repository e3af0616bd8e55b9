"""The order of one epoch, from the example ids alone: runs of the corpus and the mixing buffer.

**The order is a function of ``(seed, epoch, rank)`` and the selected example ids in corpus
order only**, never of how a cache lays them out: two caches of one corpus (other features,
dtypes, codecs, logits modes, shard or chunk sizes) give the same examples in the same order.
The selected examples, in corpus order (the cache's shard and row order, which ``precompute``
makes the corpus order), are cut into *runs* of ``run_examples`` consecutive examples
(:func:`cut_runs`); run i belongs to rank ``i % world_size`` (:func:`rank_runs`). Each epoch a
rank permutes its runs and reads them in that order: the *stream*. A mixing buffer of
``buffer_size`` examples is then simulated over the stream with
``numpy.random.default_rng([seed, epoch, rank])``: the output order is a permutation of stream
positions known before any data is read (:func:`plan_epoch`), so a resumed pass knows its
batches without reading any data.

A run is also the unit the reader decodes together: its examples are consecutive rows of one
shard (or two, where a run crosses a shard boundary), so it is read chunk-aligned and in order.
Only the chunks at a run's two ends are shared with other runs (docs/decisions.md, "Epoch
order").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Examples per run when shuffling (docs/decisions.md, "Epoch order": the decode cost measured).
DEFAULT_RUN_EXAMPLES = 64
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


def corpus_items(rows: Mapping[int, np.ndarray]) -> np.ndarray:
    """The selected ``(shard, row)`` pairs (n, 2) in corpus order: shard by shard, rows
    ascending. ``rows`` maps a shard index to its selected rows."""
    pieces = [
        np.stack([np.full(len(r), shard, dtype=np.int64), np.asarray(r, dtype=np.int64)], axis=1)
        for shard, r in sorted(rows.items())
    ]
    return np.concatenate(pieces) if pieces else np.zeros((0, 2), dtype=np.int64)


def cut_runs(items: np.ndarray, run_examples: int) -> list[np.ndarray]:
    """``items`` (n, 2) cut into runs of ``run_examples`` consecutive entries (the last shorter)."""
    return [items[i : i + run_examples] for i in range(0, len(items), run_examples)]


def rank_runs(runs: Sequence[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """The runs of rank ``rank``: run i goes to rank ``i % world_size``."""
    return list(runs[rank::world_size])


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
    runs: Sequence[np.ndarray],
    *,
    seed: int,
    epoch: int,
    rank: int,
    shuffle: bool,
    buffer_size: int,
    num_examples: int,
) -> EpochPlan:
    """Run order and mixing buffer of one epoch, fitted to ``num_examples``.

    Args:
        runs: this rank's runs, each (n_i, 2) ``(shard, row)`` in corpus order.
        seed, epoch, rank: seed ``numpy.random.default_rng([seed, epoch, rank])``.
        shuffle: False keeps the runs' order and skips the mixing buffer.
        buffer_size: examples in the mixing buffer.
        num_examples: output length; shorter orders repeat their start, longer are cut.
    """
    rng = np.random.default_rng([seed, epoch, rank])
    pieces = [runs[j] for j in rng.permutation(len(runs))] if shuffle else list(runs)
    pieces = [p for p in pieces if len(p)]
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
    """Rows per read group of an unshuffled pass: about ``window_bytes`` of decoded features
    (cache-wide mean). Only the grouping of reads depends on it, never an order."""
    arrays = manifest["arrays"]
    total = sum(info["rows"] * info["width"] for info in arrays.values()) * _DECODED_ITEMSIZE
    per_example = max(1, total // max(1, int(manifest["totals"]["num_examples"])))
    return max(1, window_bytes // per_example)
