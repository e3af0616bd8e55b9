"""partition="global_batches": N ranks share each global batch of the one-process order (DDP)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from synthetic_cache import synthetic_examples, write_examples

from cachebrew.cache import CacheWriter, parse_feature_spec
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.feed.global_batches import check_global_batch, rank_share
from cachebrew.cache.feed.partition import PARTITIONS
from cachebrew.distill.sources import DataStream
from cachebrew.errors import ConfigError

SPEC = parse_feature_spec("logits:logprobs,hidden:1", dtype="fp32")
NUM_EXAMPLES = 45  # shards of 10, 10, 10, 10, 5


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("global") / "cache"
    with CacheWriter(
        path, SPEC, teacher_info={"class": "Tiny"}, corpus_fingerprint="c", shard_size=10,
        chunk_bytes=4096,
    ) as writer:  # fmt: skip
        write_examples(writer, synthetic_examples(SPEC, NUM_EXAMPLES, seed=5))
    return path


OPTIONS = {"seed": 7, "buffer_size": 8, "window_bytes": 2000, "run_examples": 8}


def global_batch_dataset(cache: pathlib.Path, **kwargs: object) -> CacheDataset:
    return CacheDataset(cache, partition="global_batches", **kwargs)  # type: ignore[arg-type]


def _batches(dataset: CacheDataset, epoch: int) -> list[list[str]]:
    dataset.set_epoch(epoch)
    return [list(batch["example_ids"]) for batch in dataset]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_read_the_one_process_batches_in_order(
    cache: pathlib.Path, world_size: int
) -> None:
    one = CacheDataset(cache, batch_size=6, **OPTIONS)
    ranks = [
        global_batch_dataset(cache, batch_size=6, rank=r, world_size=world_size, **OPTIONS)
        for r in range(world_size)
    ]
    for epoch in (0, 1):
        expected = _batches(one, epoch)
        per_rank = [_batches(d, epoch) for d in ranks]
        assert all(len(b) == len(expected) == 8 for b in per_rank)
        for j, batch in enumerate(expected[:-1]):  # full batches: equal contiguous slices
            assert [len(b[j]) for b in per_rank] == [6 // world_size] * world_size
            assert sum((b[j] for b in per_rank), []) == batch
        # 45 = 7 * 6 + 3: the last global batch is shared out near-equally, nothing repeated
        last = [b[-1] for b in per_rank]
        assert sum(last, []) == expected[-1] and all(last)
        assert ranks[1].example_order(epoch) == [i for b in per_rank[1] for i in b]


def test_a_tail_smaller_than_the_world_repeats_its_first_example() -> None:
    batch = np.array([11, 12])
    assert [rank_share(batch, r, 3).tolist() for r in range(3)] == [[11], [12], [11]]


def test_batch_size_must_divide_by_the_ranks(cache: pathlib.Path) -> None:
    assert check_global_batch(8, 2) == 4
    with pytest.raises(ConfigError, match=r"batch_size: 9 is the global batch .* use 8 or 10"):
        global_batch_dataset(cache, batch_size=9, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="rank=2 must be below world_size=2"):
        global_batch_dataset(cache, batch_size=8, rank=2, world_size=2)


def test_partitions_are_chosen_by_name(cache: pathlib.Path) -> None:
    assert list(PARTITIONS) == ["shards", "global_batches"]
    with pytest.raises(ConfigError, match=r"unknown partition 'ddp'; choose one of \['shards'"):
        CacheDataset(cache, batch_size=6, partition="ddp")
    one = CacheDataset(cache, batch_size=6, **OPTIONS)  # shards of one rank: the same order
    assert one.example_order(1) == global_batch_dataset(
        cache, batch_size=6, **OPTIONS
    ).example_order(1)
    shards = CacheDataset(cache, batch_size=6, rank=1, world_size=2, **OPTIONS)
    assert {i for i in shards.example_order(0)} < {i for i in one.example_order(0)}


def test_a_position_saved_with_two_ranks_resumes_one_process_at_the_same_global_batch(
    cache: pathlib.Path,
) -> None:
    two = global_batch_dataset(cache, batch_size=6, rank=0, world_size=2, **OPTIONS)
    stream = DataStream(two)
    stream.start_pass(1)
    for _ in range(3):
        stream.next_batch()
    plain, tensors = stream.state_dict()

    one = global_batch_dataset(cache, batch_size=6, **OPTIONS)
    resumed = DataStream(one)
    resumed.load_state_dict(plain, {k: v for k, v in tensors.items()})
    rest = [list(resumed.next_batch()["example_ids"]) for _ in range(5)]
    assert rest == _batches(CacheDataset(cache, batch_size=6, **OPTIONS), 1)[3:]
    assert torch.is_tensor(tensors["torch"])
