"""The fused cast-and-pad copy into reused buffers equals the previous padding path bit for bit."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from cache_helpers import clone, write_cache
from synthetic_cache import synthetic_examples

import cachebrew.cache.feed.collate as collate_module
from cachebrew.cache import parse_feature_spec
from cachebrew.cache.feed.batch_copy import PARALLEL_MIN_BYTES, copy_pool, pad_stored_rows
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.format.codecs import encode
from cachebrew.cache.read.buffers import BufferPool


def pad_feature(
    name: str,
    rows: Sequence[np.ndarray],
    lengths: Sequence[int],
    width: int,
    dtype: str = "fp32",
    scales: Sequence[np.ndarray] | None = None,
) -> torch.Tensor:
    """The padding path before `cache/feed/batch_copy.py` (a fresh array, per-example copies), kept
    here as the reference the new path must equal bit for bit. Zero-padded batch of one array: hidden (B, L, D), hidden_cls (B, D), attention
    (B, H, L, L), attention_sum/mean (B, L, L); L = ``width`` (the batch's longest).

    Float32 by default: fp16 is cast, bf16 bits become the high half of each float32 and int8
    is scaled, all inside the one padding copy (numpy, one thread: torch's two-thread copy_
    was 4-20x slower on these small copies on the shared 2-core box).
    """
    kind = name.split(".", 1)[0]
    heads = rows[0].size // (lengths[0] * lengths[0]) if kind == "attention" else 0
    if kind == "hidden_cls":
        shape: tuple[int, ...] = (len(rows), rows[0].shape[1])
    elif kind == "hidden":
        shape = (len(rows), width, rows[0].shape[1])
    else:
        shape = (len(rows), heads, width, width) if heads else (len(rows), width, width)
    bf16_bits = dtype == "bf16" and rows[0].dtype == np.uint16
    out = np.zeros(shape, dtype=np.float32)
    for b, (value, n) in enumerate(zip(rows, lengths, strict=True)):
        if kind == "hidden_cls":
            target = out[b : b + 1]
        elif kind == "hidden":
            target = out[b, :n]
        else:
            target = out[b, :, :n, :n] if heads else out[b, :n, :n]
        value = value.reshape(target.shape)
        if bf16_bits:  # little-endian: the high 16 bits are the odd halves
            target.view(np.uint16)[..., 1::2] = value
        elif scales is not None:
            np.multiply(value, scales[b].reshape(-1, 1), out=target)
        else:
            target[...] = value
    return torch.from_numpy(out)


HEADS, HIDDEN = 3, 40  # 40 * 1000 rows > one inline torch copy: the split path runs too


def stored_rows(kind: str, dtype: str, lengths: list[int], seed: int):
    """Per example its stored rows (and int8 scales) of a ``kind`` array."""
    rng = np.random.default_rng(seed)
    rows, scales = [], []
    for n in lengths:
        shape = {
            "hidden": (n, HIDDEN),
            "hidden_cls": (1, HIDDEN),
            "attention": (HEADS * n * n, 1),
            "attention_sum": (n * n, 1),
        }[kind]
        value, scale = encode(rng.standard_normal(shape).astype(np.float32) * 3, dtype)
        rows.append(value)
        scales.append(scale)
    return rows, (scales if dtype == "int8" else None)


CASES = [
    (kind, dtype)
    for kind in ("hidden", "hidden_cls", "attention", "attention_sum")
    for dtype in ("fp32", "fp16", "bf16", "int8")
    if not (dtype == "int8" and kind.startswith("attention"))
]


@pytest.mark.parametrize(("kind", "dtype"), CASES)
def test_pad_stored_rows_equals_pad_feature_across_reused_buffers(kind: str, dtype: str) -> None:
    pool = BufferPool()
    name = f"{kind}.3"
    # wide then narrow batches: a reused buffer holds stale values where the padding goes
    for step, lengths in enumerate([[1000, 7, 300], [9, 4], [120, 1000, 2, 64], [5, 3, 1]]):
        rows, scales = stored_rows(kind, dtype, lengths, seed=step)
        if kind.startswith("attention") and max(lengths) > 200:
            lengths = [min(n, 60) for n in lengths]
            rows, scales = stored_rows(kind, dtype, lengths, seed=step)
        width = max(lengths) + step % 2  # sometimes wider than the longest example
        want = pad_feature(name, rows, lengths, width, dtype, scales)
        got = pad_stored_rows(name, rows, lengths, width, dtype, scales, pool)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert pool.allocations < 8  # the buffers were reused


def test_a_buffer_still_used_by_a_batch_is_never_reused() -> None:
    pool = BufferPool(per_key=2)
    first = torch.from_numpy(pool.take("a", (4, 5)))
    first.fill_(7.0)
    second = pool.take("a", (4, 5))
    second.fill(1.0)
    assert torch.all(first == 7.0)  # held: the pool gave out new memory
    view = first[1:]  # a view alone keeps the buffer busy
    del first
    pool.take("a", (4, 5)).fill(2.0)
    assert torch.all(view == 7.0)
    allocations = pool.allocations
    del view, second
    kept = [pool.take("a", (2, 3)), pool.take("a", (2, 3))]
    assert pool.allocations == allocations  # both freed buffers served again
    kept.append(pool.take("a", (2, 3)))  # all in use and the pool is full: fresh memory
    assert pool.allocations == allocations + 1


@pytest.fixture(params=["fp16", "bf16", "int8"])
def cache(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> pathlib.Path:
    features = "hidden:0,1" if request.param == "int8" else "hidden:0,hidden_cls:1,attention:1"
    spec = parse_feature_spec(f"logits,{features}", dtype=request.param)
    examples = synthetic_examples(spec, 29, seed=5, num_classes=3, hidden_size=48, num_heads=2)
    return write_cache(tmp_path / "cache", spec, examples, shard_size=13, chunk_bytes=5000)


def test_dataset_batches_equal_the_previous_path_bit_for_bit(
    cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dataset() -> CacheDataset:
        return CacheDataset(
            cache, batch_size=4, seed=2, buffer_size=6, window_bytes=3000, run_examples=8
        )

    # the new path, consumed one batch at a time (buffers reused) and all at once (held)
    streamed = [clone(batch) for batch in dataset()]
    held = list(dataset())

    def previous(name, rows, lengths, width, dtype, scales, buffers):  # type: ignore[no-untyped-def]
        rows = [np.array(r, copy=True) for r in rows]  # per-example copies, as before
        return pad_feature(name, rows, lengths, width, dtype, scales)

    monkeypatch.setattr(collate_module, "pad_stored_rows", previous)
    expected = list(dataset())
    assert [b["example_ids"] for b in streamed] == [b["example_ids"] for b in expected]
    for got in (streamed, held):
        for a, b in zip(got, expected, strict=True):
            for kind in ("hidden", "attention"):
                for x, y in zip(
                    a["teacher_cache"].get(kind, []), b["teacher_cache"].get(kind, []), strict=True
                ):
                    assert (x is None) == (y is None)
                    if x is not None:
                        assert x.dtype == y.dtype == torch.float32
                        assert torch.equal(x.view(torch.int32), y.view(torch.int32))
            assert torch.equal(a["teacher_cache"]["logits"], b["teacher_cache"]["logits"])


def test_only_large_batches_copy_their_arrays_in_parallel() -> None:
    pool = object()  # any executor; copy_pool only decides whether to use it
    rows = np.zeros((20, 64), dtype=np.float16)  # 2,560 bytes per example and array
    small = [{"a": rows, "b": rows}] * 4
    large = [{"a": rows, "b": rows}] * (PARALLEL_MIN_BYTES // rows.nbytes + 1)
    assert copy_pool(pool, small, ["a", "b"]) is None
    assert copy_pool(pool, large, ["a", "b"]) is pool
    assert copy_pool(pool, large, ["a"]) is None  # one array: nothing to overlap
    assert copy_pool(None, large, ["a", "b"]) is None
