"""The numcodecs read path and the stored-dtype batches equal zarr's decode bit for bit."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from cache_helpers import same, write_cache
from synthetic_cache import synthetic_examples

import cachebrew.cache.read.shard as shard_module
from cachebrew.cache import open_cache, parse_feature_spec
from cachebrew.cache.feed import batch_copy
from cachebrew.cache.feed.collate import collate_examples
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.errors import CacheCorruptError, ConfigError

SPECS = {
    "fp16-zstd": parse_feature_spec(
        "logits:logprobs,hidden:0,2,attention:1", dtype="fp16", codec="zstd"
    ),
    "fp16-default": parse_feature_spec("logits:logprobs,hidden:0,2,attention:1", dtype="fp16"),
    "bf16-lz4": parse_feature_spec("logits,hidden:1,hidden_cls:2", dtype="bf16", codec="lz4"),
    "int8-none": parse_feature_spec("hidden:0,1", dtype="int8", codec="none"),
    "topk-fp16": parse_feature_spec("logits,hidden:1", dtype="fp16", topk=3, vocab_size=11),
}


def write(path: pathlib.Path, name: str) -> pathlib.Path:
    spec = SPECS[name]
    examples = synthetic_examples(spec, 23, seed=7, num_classes=11, hidden_size=64)
    return write_cache(path, spec, examples, shard_size=9)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_batches_equal_zarr_decode_bit_for_bit(
    tmp_path: pathlib.Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "cache", name)
    dataset = CacheDataset(
        path, batch_size=5, seed=3, buffer_size=4, window_bytes=600, run_examples=4
    )
    fast = list(dataset)
    monkeypatch.setattr(shard_module, "chunk_decoder", lambda *args: None)  # zarr reads it
    old = open_cache(path)
    assert old.shard(0)._decoder(next(iter(old.manifest["arrays"]))) is None
    expected = [
        collate_examples(
            [old.get(i) for i in batch["example_ids"]], dataset.layout, dataset.options
        )
        for batch in fast
    ]
    assert [b["example_ids"] for b in fast] == [b["example_ids"] for b in expected]
    assert all(same(a, b) for a, b in zip(fast, expected, strict=True))
    # iter_examples (cast to float32) equals zarr's per-example reads too
    monkeypatch.undo()
    for got in open_cache(path).iter_examples(window_bytes=600):
        want = old.get(got["example_id"])["features"]
        assert got["features"].keys() == want.keys()
        for key, value in want.items():
            assert got["features"][key].dtype == value.dtype
            np.testing.assert_array_equal(got["features"][key], value)


@pytest.mark.parametrize(
    ("name", "window", "buffer"),
    [("fp16-zstd", 5000, 1024), ("fp16-zstd", 600, 4), ("int8-none", 600, 4), ("bf16-lz4", 600, 4)],
)
def test_two_decode_threads_give_the_same_batches(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, name: str, window: int, buffer: int
) -> None:
    # buffer 4 and small runs: batches are emitted between runs, so the next run decodes in
    # the background while a batch is padded (its arrays in parallel, as a large cache's are:
    # no size floor here); every epoch reuses the last one's chunk memory
    monkeypatch.setattr(batch_copy, "PARALLEL_MIN_BYTES", 0)
    path = write(tmp_path / "cache", name)
    one = CacheDataset(
        path, batch_size=4, seed=1, window_bytes=window, run_examples=4, buffer_size=buffer
    )
    two = CacheDataset(
        path,
        batch_size=4,
        seed=1,
        window_bytes=window,
        run_examples=4,
        buffer_size=buffer,
        decode_threads=2,
    )
    for epoch in range(3):
        one.set_epoch(epoch)
        two.set_epoch(epoch)
        a, b = list(one), list(two)
        assert len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError, match="decode_threads=0"):
        CacheDataset(path, batch_size=4, decode_threads=0)


def test_a_corrupt_chunk_is_caught_on_the_fast_path(
    tmp_path: pathlib.Path, flip_chunk_byte: Callable[[pathlib.Path, int, str], None]
) -> None:
    path = write(tmp_path / "cache", "int8-none")
    flip_chunk_byte(path, 1, "hidden.1")
    dataset = CacheDataset(path, batch_size=4, shuffle=False, decode_threads=2)
    with pytest.raises(CacheCorruptError) as info:
        list(dataset)
    message = str(info.value)
    assert "shard 1, array 'hidden.1', chunk 0" in message and "crc32" in message
    assert "examples affected: ['ex00009'" in message


def test_a_corrupt_chunk_of_the_default_codec_is_caught_while_shuffling(
    tmp_path: pathlib.Path, flip_chunk_byte: Callable[[pathlib.Path, int, str], None]
) -> None:
    path = write(tmp_path / "cache", "fp16-default")
    assert open_cache(path).manifest["codecs"].keys() == {"lz4-bitshuffle"}
    flip_chunk_byte(path, 2, "attention.1")
    with pytest.raises(CacheCorruptError) as info:
        list(CacheDataset(path, batch_size=3, seed=4, window_bytes=600, run_examples=4))
    message = str(info.value)
    assert "shard 2, array 'attention.1', chunk 0 " in message
    assert "crc32" in message or "cannot be decoded" in message
    assert "examples affected: ['ex00018'" in message


def test_checksums_are_checked_once_per_reader_until_a_chunk_file_changes(
    tmp_path: pathlib.Path,
    flip_chunk_byte: Callable[[pathlib.Path, int, str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write(tmp_path / "cache", "int8-none")  # no codec: only the crc32 sees a flip
    checked: list[int] = []
    original = shard_module.chunk_checksum
    monkeypatch.setattr(
        shard_module, "chunk_checksum", lambda data: (checked.append(1), original(data))[1]
    )
    dataset = CacheDataset(path, batch_size=4, seed=2, window_bytes=600, run_examples=4)
    first = list(dataset)
    assert checked  # the first epoch checks every chunk it decodes
    allocations = dataset._chunk_blocks.allocations
    checked.clear()
    again = list(dataset)  # the same epoch again: the same peak of live chunks
    assert checked == []  # unchanged files: not checked again by this reader
    assert dataset._chunk_blocks.allocations == allocations  # decoded into freed memory
    assert all(same(a, b) for a, b in zip(first, again, strict=True))
    dataset.set_epoch(1)
    list(dataset)
    assert checked == []
    flip_chunk_byte(path, 1, "hidden.1")  # rewritten under the running reader
    with pytest.raises(CacheCorruptError, match=r"shard 1, array 'hidden.1', chunk 0 .*crc32"):
        list(dataset)


def test_a_missing_uncompressed_chunk_of_the_wrong_size_is_named(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path / "cache", "int8-none")
    chunk = path / "shards" / "00000" / "hidden.0" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    with pytest.raises(CacheCorruptError, match=r"shard 0, array 'hidden.0', chunk 0 .*decoded"):
        open_cache(path).get("ex00000")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_are_cast_on_the_gpu_to_the_cpu_values(tmp_path: pathlib.Path) -> None:
    for name in ("fp16-zstd", "bf16-lz4", "int8-none"):
        path = write(tmp_path / name, name)
        cpu = list(CacheDataset(path, batch_size=5, seed=2))
        gpu = list(CacheDataset(path, batch_size=5, seed=2, device="cuda"))
        for a, b in zip(cpu, gpu, strict=True):
            for kind in ("hidden", "attention"):
                expected, got = a["teacher_cache"].get(kind, []), b["teacher_cache"].get(kind, [])
                for x, y in zip(expected, got, strict=True):
                    assert (x is None) == (y is None)
                    if x is not None:
                        assert y.is_cuda and y.dtype == torch.float32
                        assert torch.equal(x, y.cpu())
