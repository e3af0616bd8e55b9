"""The packed GPU feed (cache/feed/gpu_feed.py): run on the CPU, it gives the CPU path's float32
batches bit for bit; its host buffers are reused only after the copy that read them ended."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
import torch
from cache_helpers import write_cache
from synthetic_cache import synthetic_examples

from cachebrew.cache import parse_feature_spec
from cachebrew.cache.feed import batch_copy
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.feed.gpu_feed import PinnedPool, pack_rows, unpack

SPECS = {
    "fp16": parse_feature_spec("hidden:0,2,attention:1", dtype="fp16", codec="zstd"),
    "bf16": parse_feature_spec("logits,hidden:1,hidden_cls:2,attention:0", dtype="bf16"),
    "int8": parse_feature_spec("hidden:0,1,hidden_cls:2", dtype="int8", codec="none"),
    "fp32": parse_feature_spec("hidden:1,attention_sum:0,attention_mean:2", dtype="fp32"),
}


def write(path: pathlib.Path, name: str) -> pathlib.Path:
    spec = SPECS[name]
    examples = synthetic_examples(spec, 23, seed=5, num_classes=11, hidden_size=32)
    return write_cache(path, spec, examples, shard_size=9)


def packed(dataset: CacheDataset, pinned: PinnedPool) -> CacheDataset:
    """The same dataset collating through the packed path, on the CPU."""
    dataset.options = dataclasses.replace(dataset.options, pinned=pinned)
    return dataset


def layers(batch: dict, kind: str) -> list[torch.Tensor | None]:
    return batch["teacher_cache"].get(kind, [])


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_batches_equal_the_cpu_batches_bit_for_bit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, name: str, threads: int
) -> None:
    monkeypatch.setattr(batch_copy, "PARALLEL_MIN_BYTES", 0)  # pack in parallel, as large caches do
    path = write(tmp_path / "cache", name)
    kwargs = {"batch_size": 5, "seed": 3, "buffer_size": 4, "window_bytes": 600, "run_examples": 4}
    pinned = PinnedPool(slots=4, pin=False)
    for epoch in range(2):  # shuffled epochs; the second reuses the pool's buffers
        cpu = CacheDataset(path, **kwargs)
        new = packed(CacheDataset(path, decode_threads=threads, **kwargs), pinned)
        cpu.set_epoch(epoch)
        new.set_epoch(epoch)
        expected, got = list(cpu), list(new)  # all kept: a reused buffer must not show
        assert [b["example_ids"] for b in expected] == [b["example_ids"] for b in got]
        compared = 0
        for a, b in zip(expected, got, strict=True):
            for kind in ("hidden", "attention"):
                assert len(layers(a, kind)) == len(layers(b, kind))
                for x, y in zip(layers(a, kind), layers(b, kind), strict=True):
                    assert (x is None) == (y is None)
                    if x is not None:
                        assert y.dtype == torch.float32 and x.shape == y.shape
                        assert torch.equal(x.view(torch.int32), y.view(torch.int32))
                        compared += 1
        assert compared >= 2 * len(expected)
    assert pinned.allocations <= 2 * pinned.slots  # reused, grown at most once each


def test_unpack_pads_every_kind_with_zeros_and_scales_int8_rows() -> None:
    lengths = [2, 3]
    hidden = [np.arange(n * 4, dtype=np.int8).reshape(n, 4) for n in lengths]
    scales = [np.full((n, 1), 0.5 + b, dtype=np.float32) for b, n in enumerate(lengths)]
    buffer = torch.empty(256, dtype=torch.uint8)
    values, offset = pack_rows(hidden, buffer)
    scale_values = pack_rows(scales, buffer, offset)[0]
    out = unpack("hidden.0", values, (2, 3, 4), torch.tensor(lengths), "int8", scale_values)
    assert torch.equal(out[0, :2], torch.arange(8.0).view(2, 4) * 0.5)
    assert torch.equal(out[0, 2], torch.zeros(4))
    assert torch.equal(out[1], torch.arange(12.0).view(3, 4) * 1.5)
    heads = [np.ones((2, n * n), dtype=np.float16) for n in lengths]  # (H, n, n) flattened
    values = pack_rows(heads, buffer)[0]
    out = unpack("attention.1", values, (2, 2, 3, 3), torch.tensor(lengths), "fp16")
    assert out[0, :, :2, :2].eq(1).all() and out[0, :, 2:].eq(0).all()
    assert out[0, :, :, 2:].eq(0).all() and out[1].eq(1).all()


class FakeEvent:
    """A copy event that completes when the test says so."""

    def __init__(self) -> None:
        self.done = False
        self.waited = 0

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited += 1
        self.done = True


def test_a_buffer_is_not_handed_out_while_its_copy_is_pending() -> None:
    pool = PinnedPool(slots=3, pin=False)
    first = pool.take(100)
    pending = FakeEvent()
    pool.release(first, pending)
    second = pool.take(100)
    assert second is not first  # the copy reading `first` has not completed
    pool.release(second, None)  # completed at once
    assert pool.take(50) is second
    third = pool.take(10)  # the others taken or pending, room for one more: a new one
    assert third is not first and third is not second and pending.waited == 0
    pending.done = True
    assert pool.take(100) is first  # its copy completed: reused
    assert pool.allocations == 3


def test_a_full_pool_waits_for_the_oldest_pending_copy_before_reusing_it() -> None:
    pool = PinnedPool(slots=2, pin=False)
    a, b = pool.take(8), pool.take(8)
    first, later = FakeEvent(), FakeEvent()
    pool.release(a, first)
    pool.release(b, later)
    again = pool.take(8)
    assert again is a and first.waited == 1 and later.waited == 0
    assert pool.take(8) is b and later.waited == 1  # b only after waiting for its copy
    assert pool.allocations == 2


def test_a_released_buffer_that_fits_is_preferred_to_growing_one() -> None:
    pool = PinnedPool(slots=2, pin=False)
    small, large = pool.take(8), pool.take(64)
    pool.release(small, None)
    pool.release(large, None)
    assert pool.take(64) is large and pool.allocations == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_packed_cuda_path_uses_pinned_buffers_and_gives_the_cpu_values(
    tmp_path: pathlib.Path,
) -> None:
    for name in sorted(SPECS):
        path = write(tmp_path / name, name)
        cpu = list(CacheDataset(path, batch_size=5, seed=2))
        dataset = CacheDataset(path, batch_size=5, seed=2, device="cuda")
        gpu = list(dataset)
        torch.cuda.synchronize()
        assert dataset.options.pinned is not None and dataset.options.pinned.pin
        for a, b in zip(cpu, gpu, strict=True):
            for kind in ("hidden", "attention"):
                for x, y in zip(layers(a, kind), layers(b, kind), strict=True):
                    if x is not None:
                        assert y is not None and y.is_cuda and torch.equal(x, y.cpu())
