"""The epoch order is a function of (seed, epoch, example ids) only (issue 24): two caches of
one corpus with other features, dtypes, codecs, logits modes, shard or chunk sizes give the
same examples in the same batches, for CacheDataset's shard and global-batch partitions alike."""

from __future__ import annotations

import pathlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from cache_helpers import write_cache
from synthetic_cache import synthetic_examples

from cachebrew.cache import parse_feature_spec
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.format.spec import FeatureSpec

NUM_EXAMPLES = 70
VOCAB = 300
FULL = parse_feature_spec("logits,hidden:0,1,attention:1", dtype="fp32")
EXAMPLES = synthetic_examples(FULL, NUM_EXAMPLES, seed=5, num_classes=VOCAB, logit_rows=1)


def _logits_spec(mode: str, dtype: str = "fp16") -> FeatureSpec:
    logits = parse_feature_spec("logits", dtype=dtype).get("logits")
    assert logits is not None
    return FeatureSpec((replace(logits, logits_mode=mode, vocab_size=VOCAB),))


# (spec, shard_size, chunk_bytes, codec): the same corpus stored five ways
LAYOUTS: dict[str, tuple[FeatureSpec, int, int]] = {
    "all-fp32": (FULL, 10, 4096),
    "hidden-fp16-zstd": (parse_feature_spec("hidden:0", dtype="fp16", codec="zstd"), 16, 4096),
    "attention-bf16": (parse_feature_spec("attention:1", dtype="bf16"), 7, 20_000),
    "topk-8-q4": (_logits_spec("topk:8:q4"), 25, 5000),
    "sample-12": (_logits_spec("sample:12"), 64, 2**20),
    "dense-logits-int8": (parse_feature_spec("logits", dtype="int8"), 33, 4096),
}


def _write(path: pathlib.Path, spec: FeatureSpec, shard_size: int, chunk_bytes: int) -> str:
    names = set(spec.input_names)
    examples = [
        {**e, "features": {k: v for k, v in e["features"].items() if k in names}} for e in EXAMPLES
    ]
    return str(write_cache(path, spec, examples, shard_size=shard_size, chunk_bytes=chunk_bytes))


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("order")
    return {name: _write(root / name, *layout) for name, layout in LAYOUTS.items()}


def _epoch(dataset: CacheDataset, epoch: int) -> list[list[str]]:
    dataset.set_epoch(epoch)
    return [list(batch["example_ids"]) for batch in dataset]


OPTIONS: dict[str, Any] = {"batch_size": 6, "seed": 11, "buffer_size": 16, "run_examples": 8}


def test_every_layout_gives_the_same_batches_per_epoch(caches: dict[str, str]) -> None:
    datasets = {name: CacheDataset(path, **OPTIONS) for name, path in caches.items()}
    reference = datasets["all-fp32"]
    assert len({len(d) for d in datasets.values()}) == 1
    orders = []
    for epoch in range(3):
        expected = _epoch(reference, epoch)
        orders.append(sum(expected, []))
        for name, dataset in datasets.items():
            assert _epoch(dataset, epoch) == expected, name
            assert dataset.example_order(epoch) == orders[-1], name
    assert len({tuple(o) for o in orders}) == 3  # the epochs differ
    assert sorted(orders[0]) == [e["example_id"] for e in EXAMPLES]


def test_ranks_subsets_and_resume_are_layout_free_too(caches: dict[str, str]) -> None:
    subset = [e["example_id"] for e in EXAMPLES][5:66:2]
    per_layout = []
    for path in caches.values():
        ranks = [
            CacheDataset(path, rank=r, world_size=2, example_ids=subset, **OPTIONS)
            for r in range(2)
        ]
        shares = [
            CacheDataset(
                path,
                partition="global_batches",
                rank=r,
                world_size=3,
                **{**OPTIONS, "batch_size": 9},
            )
            for r in range(3)
        ]
        resumed = CacheDataset(path, **OPTIONS)
        resumed.set_epoch(2)
        resumed.resume_at(4)
        per_layout.append(
            (
                [d.example_order(1) for d in ranks],
                [_epoch(d, 1) for d in shares],
                [list(b["example_ids"]) for b in resumed],
            )
        )
    assert all(entry == per_layout[0] for entry in per_layout)


def test_the_order_depends_on_the_run_size_and_seed_not_on_the_window(
    caches: dict[str, str],
) -> None:
    path = caches["all-fp32"]

    def order(**kwargs: Any) -> list[str]:
        return CacheDataset(path, **{**OPTIONS, **kwargs}).example_order(0)

    assert order(window_bytes=300) == order(window_bytes=2**24) == order()
    assert order(run_examples=5) != order()
    assert order(seed=12) != order()
    runs = np.asarray([int(i[2:]) // 8 for i in order(buffer_size=1)])
    assert (np.diff(runs) != 0).sum() == NUM_EXAMPLES // 8  # whole runs, one after another
