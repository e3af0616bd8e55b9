"""The distill GPU path (issue 13 item 6): pinned host memory, non-blocking copies, the fp16 ->
fp32 cast on the device. Skipped without CUDA; the CPU half of each check always runs."""

from __future__ import annotations

import pathlib

import pytest
import torch
from synthetic_cache import synthetic_examples, write_examples

from cachebrew.cache import CacheWriter, parse_feature_spec
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.distill.batches import move_to_device, upcast_floats

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SPEC = parse_feature_spec("logits:logprobs,hidden:1", dtype="fp16")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("gpu") / "cache"
    with CacheWriter(
        path, SPEC, teacher_info={"class": "Tiny"}, corpus_fingerprint="c", shard_size=8
    ) as writer:
        write_examples(writer, synthetic_examples(SPEC, 20, seed=2))
    return path


def test_move_to_device_keeps_values_and_structure_on_the_cpu() -> None:
    batch = {"a": torch.arange(3), "b": [torch.ones(2, dtype=torch.float16)], "n": 1}
    moved = move_to_device(batch, torch.device("cpu"))
    assert torch.equal(moved["a"], batch["a"]) and moved["n"] == 1
    assert isinstance(moved["b"], tuple) and not moved["a"].is_pinned()


@needs_cuda
def test_host_tensors_reach_cuda_through_pinned_non_blocking_copies() -> None:
    batch = {"ids": torch.arange(6).view(2, 3), "hidden": torch.randn(2, 3).half()}
    moved = move_to_device(batch, torch.device("cuda"))
    torch.cuda.synchronize()
    assert moved["ids"].is_cuda and torch.equal(moved["ids"].cpu(), batch["ids"])
    upcast = upcast_floats(moved["hidden"])
    assert upcast.is_cuda and upcast.dtype == torch.float32  # cast on the device
    assert torch.equal(upcast.cpu(), batch["hidden"].float())


@needs_cuda
def test_the_dataset_on_cuda_yields_the_cpu_batches(cache: pathlib.Path) -> None:
    kwargs = {"batch_size": 4, "rank": 1, "world_size": 2, "seed": 1, "partition": "global_batches"}
    on_cpu = list(CacheDataset(cache, **kwargs))
    on_gpu = list(CacheDataset(cache, device="cuda", **kwargs))
    assert len(on_cpu) == len(on_gpu) == 5
    for cpu_batch, gpu_batch in zip(on_cpu, on_gpu, strict=True):
        assert cpu_batch["example_ids"] == gpu_batch["example_ids"]
        hidden_cpu = cpu_batch["teacher_cache"]["hidden"][1]
        hidden_gpu = gpu_batch["teacher_cache"]["hidden"][1]
        assert hidden_gpu.is_cuda and hidden_gpu.dtype == torch.float32
        assert torch.equal(hidden_gpu.cpu(), hidden_cpu)
