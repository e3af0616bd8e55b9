"""Helpers shared by the cache tests: write a small cache, compare and copy collated batches."""

from __future__ import annotations

import pathlib
from typing import Any

import torch
from synthetic_cache import write_examples

from cachebrew.cache import CacheWriter


def write_cache(
    path: pathlib.Path,
    spec: Any,
    examples: list[dict[str, Any]],
    *,
    shard_size: int = 10,
    chunk_bytes: int = 4096,
) -> pathlib.Path:
    """A cache of ``examples`` in small shards and chunks (many chunks, several read groups)."""
    with CacheWriter(
        path,
        spec,
        teacher_info={"class": "Tiny"},
        corpus_fingerprint="corpus-1",
        shard_size=shard_size,
        chunk_bytes=chunk_bytes,
    ) as writer:
        write_examples(writer, examples)
    return path


def same(a: Any, b: Any) -> bool:
    """Batches (nested dicts, lists and tensors) equal bit for bit, dtypes included."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def clone(batch: Any) -> Any:
    """A copy of a batch that outlives the pooled buffers its tensors view."""
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, dict):
        return {k: clone(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(clone(v) for v in batch)
    return batch
