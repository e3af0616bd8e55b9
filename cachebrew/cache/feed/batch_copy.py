"""Cast-and-pad copy of a batch's hidden states and attention into reused float32 buffers.

The CPU collate path of :class:`~cachebrew.cache.feed.dataset.CacheDataset`: each example's stored
rows (usually a view into a decoded chunk, no per-example copy) are cast to float32 while they
are copied into their slot of the padded batch, and only the padding is zeroed.

Two measurements on the shared 2-core box (docs/benchmarks-history.md, "Reader against its codec") shape it:

- **Fresh output memory costs as much as the cast.** A new zeroed float32 batch per array per
  batch spent ~0.04 s of a 0.16 s hidden-state epoch in page faults; the output comes from a
  :class:`~cachebrew.cache.read.buffers.BufferPool`, which never hands out a buffer that a batch
  the caller keeps still uses.
- **torch's fp16 -> fp32 copy is ~2.3x numpy's, but only on one thread.** Above
  ``GRAIN_SIZE`` elements torch splits a copy over its intra-op threads, which on the loaded
  2-core box was 4-30x slower than one thread; copies are therefore issued in pieces below
  that size, which torch runs in the calling thread. The results are the same bits (fp16 and
  bf16 widen exactly to float32); int8 is scaled with numpy exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cachebrew.cache.format.codecs import torch_values
from cachebrew.cache.format.shapes import ArrayShape, array_shape, example_region, padded_shape
from cachebrew.cache.read.buffers import BufferPool

# torch's at::internal::GRAIN_SIZE: a TensorIterator copy of fewer elements runs inline.
_INLINE_ELEMENTS = 32767

# Stored bytes of one array of a batch below which its copy is not worth a thread: the demo's
# MiniLM batches (~0.3 MB per array) padded or packed slower in parallel than in the calling
# thread, BERT-base-shaped ones (~2 MB) faster (docs/benchmarks-history.md, "fifth pass").
PARALLEL_MIN_BYTES = 2**20


def copy_pool(pool: Any, features: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]) -> Any:
    """``pool`` when the arrays ``names`` of a batch are worth copying in parallel, else None."""
    if pool is None or len(names) < 2:
        return None
    return pool if sum(f[names[0]].nbytes for f in features) >= PARALLEL_MIN_BYTES else None


def scale_rows(features: Sequence[Mapping[str, np.ndarray]], name: str) -> list[np.ndarray] | None:
    """Per example the (rows_b, 1) ``<name>.scale`` rows of an int8 array, or None."""
    key = f"{name}.scale"
    return [f[key] for f in features] if key in features[0] else None


def pad_stored_rows(
    name: str,
    rows: Sequence[np.ndarray],
    lengths: Sequence[int],
    width: int,
    dtype: str = "fp32",
    scales: Sequence[np.ndarray] | None = None,
    buffers: BufferPool | None = None,
) -> torch.Tensor:
    """The zero-padded float32 batch of one array, cast in the copy.

    Its shape is :func:`~cachebrew.cache.format.shapes.padded_shape`; the cast is
    :func:`~cachebrew.cache.format.codecs.torch_values` (int8: times its row scales, in numpy).

    Args:
        name: the stored array's name (its kind decides the shape).
        rows: per example its stored rows (rows_b, width_stored): float32, fp16, bf16 bits as
            uint16, or int8 with ``scales``.
        lengths: per example its token count n_b.
        width: L, the batch's longest example.
        dtype: the storage dtype name (``"bf16"`` marks uint16 rows as bf16 bits).
        scales: per example the (rows_b, 1) float32 scales of int8 rows.
        buffers: where the output memory comes from (None: fresh memory).

    Returns:
        The same values, bit for bit, as the previous per-example padding path (kept as the
        reference in ``tests/unit/cache/feed/test_cache_batch_copy.py``).
    """
    shape = padded_shape(name, rows, lengths, width)
    rule = array_shape(name)
    out = (
        buffers.take(name, shape, np.float32)
        if buffers is not None
        else np.empty(shape, np.float32)
    )
    for b, (value, n) in enumerate(zip(rows, lengths, strict=True)):
        target = out[b]
        region = target[example_region(name, target.shape, n)]
        _zero_padding(target, rule, n)
        value = value.reshape(region.shape)
        if scales is not None and value.dtype == np.int8:  # one scale per stored row
            np.multiply(value, scales[b].reshape(region.shape[:-1] + (1,)), out=region)
        else:
            _cast_copy(torch.from_numpy(region), torch_values(torch.from_numpy(value), dtype))
    return torch.from_numpy(out)


def _zero_padding(target: np.ndarray, rule: ArrayShape | None, n: int) -> None:
    """Zero the padding of one example's slot, and only the padding."""
    if rule is not None and rule.token_axes == 1:  # (L, D): the rows after n
        target[n:] = 0
    elif rule is not None and rule.token_axes == 2:  # (H, L, L) or (L, L): beyond n x n
        target[..., :n, n:] = 0
        target[..., n:, :] = 0


def _cast_copy(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target.copy_(source)`` in pieces torch runs in this thread (module docstring)."""
    count = target.numel()
    if count <= _INLINE_ELEMENTS:
        target.copy_(source)
        return
    if target.shape[0] == 1:  # one slice along dim 0 is already too large: split inside it
        _cast_copy(target[0], source[0])
        return
    step = max(1, target.shape[0] * _INLINE_ELEMENTS // count)
    for start in range(0, target.shape[0], step):
        _cast_copy(target[start : start + step], source[start : start + step])
