"""CacheDataset: order, ranks, workers, resume, padding, logits layouts, student items, subsets."""

from __future__ import annotations

import pathlib
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from cache_helpers import same, write_cache
from synthetic_cache import synthetic_examples, synthetic_features
from torch.utils.data import DataLoader

from cachebrew.cache import open_cache, parse_feature_spec, restore_shape
from cachebrew.cache.feed.collate import collate_labels, token_type_ids
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.read.shard import ShardReader
from cachebrew.distill.sources import DataStream
from cachebrew.errors import CacheCorruptError, CacheMismatchError, ConfigError

SPEC = parse_feature_spec("logits:logprobs,hidden:0,2,hidden_cls:1,attention:1", dtype="fp32")
NUM_EXAMPLES = 45  # write_cache's shards of 10: 10, 10, 10, 10, 5


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    examples = synthetic_examples(SPEC, NUM_EXAMPLES, seed=3)
    return write_cache(tmp_path_factory.mktemp("ds") / "cache", SPEC, examples)


def all_ids() -> list[str]:
    return [f"ex{i:05d}" for i in range(NUM_EXAMPLES)]


def epoch_ids(dataset: CacheDataset, epoch: int = 0) -> list[str]:
    dataset.set_epoch(epoch)
    return [i for batch in dataset for i in batch["example_ids"]]


@pytest.fixture
def decoded_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows decoded per read call (every ShardReader.read_rows call: the dataset decodes
    through it, keeping the stored dtype until the batch is padded)."""
    calls: list[int] = []
    original = ShardReader.read_rows

    def counting(self: ShardReader, name: str, start: int, stop: int, **kw: Any) -> np.ndarray:
        calls.append(stop - start)
        return original(self, name, start, stop, **kw)

    monkeypatch.setattr(ShardReader, "read_rows", counting)
    return calls


# ------------------------------------------------------------------------ order


def test_every_example_exactly_once_per_epoch(cache: pathlib.Path) -> None:
    dataset = CacheDataset(cache, batch_size=4, buffer_size=8, window_bytes=2000, run_examples=8)
    assert len(dataset) == 12
    for epoch in range(2):
        ids = epoch_ids(dataset, epoch)
        assert Counter(ids) == Counter(all_ids())
        assert ids == dataset.example_order(epoch)


def test_order_is_a_function_of_seed_and_epoch(cache: pathlib.Path) -> None:
    def order(seed: int, epoch: int) -> list[str]:
        return CacheDataset(
            cache, batch_size=4, seed=seed, window_bytes=2000, run_examples=8
        ).example_order(epoch)

    assert (
        order(0, 0)
        == order(0, 0)
        == epoch_ids(CacheDataset(cache, batch_size=4, window_bytes=2000, run_examples=8))
    )
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert order(0, 0) != all_ids()


def test_no_shuffle_is_corpus_order(cache: pathlib.Path) -> None:
    dataset = CacheDataset(cache, batch_size=4, shuffle=False)
    assert epoch_ids(dataset, 0) == epoch_ids(dataset, 3) == all_ids()
    assert all_ids() == open_cache(cache).example_ids()


def test_ranks_are_disjoint_with_equal_batch_counts(cache: pathlib.Path) -> None:
    # runs of 10: runs 0, 2, 4 (25 examples) to rank 0; runs 1, 3 (20) to rank 1
    ranks = [
        CacheDataset(cache, batch_size=4, rank=r, world_size=2, run_examples=10) for r in range(2)
    ]
    assert [len(d) for d in ranks] == [7, 7]
    ids = [epoch_ids(d, 1) for d in ranks]
    assert len(ids[0]) == len(ids[1]) == 25
    assert len(set(ids[1])) == 20 and ids[1][20:] == ids[1][:5]  # padded by repeating its start
    assert not set(ids[0]) & set(ids[1])
    assert set(ids[0]) | set(ids[1]) == set(all_ids())

    dropped = [
        CacheDataset(cache, batch_size=4, rank=r, world_size=2, drop_last=True, run_examples=10)
        for r in range(2)
    ]
    assert [len(d) for d in dropped] == [5, 5]
    assert [len(epoch_ids(d)) for d in dropped] == [20, 20]

    with pytest.raises(CacheMismatchError, match=r"ranks \[5\] of world_size 6 get no examples"):
        CacheDataset(cache, batch_size=4, rank=0, world_size=6, run_examples=10)


def test_dataloader_workers_share_the_batches(cache: pathlib.Path) -> None:
    dataset = CacheDataset(cache, batch_size=4, buffer_size=8, window_bytes=2000, run_examples=8)
    dataset.set_epoch(2)
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 12
    assert [i for b in batches for i in b["example_ids"]] == dataset.example_order(2)
    assert_same_batches(batches, list(dataset))


# ------------------------------------------------------------------------ resume


def assert_identical(x: Any, y: Any) -> None:
    """Nested dicts/lists of tensors, strings and None: equal bit for bit."""
    assert type(x) is type(y)
    if isinstance(x, dict):
        assert x.keys() == y.keys()
        for key in x:
            assert_identical(x[key], y[key])
    elif isinstance(x, list):
        assert len(x) == len(y)
        for a, b in zip(x, y, strict=True):
            assert_identical(a, b)
    elif isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and torch.equal(x, y)
    else:
        assert x == y


def assert_same_batches(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert_identical(x, y)


def test_resume_at_yields_the_rest_without_decoding_the_skipped(
    cache: pathlib.Path, decoded_rows: list[int]
) -> None:
    dataset = CacheDataset(cache, batch_size=4, buffer_size=4, window_bytes=2000, run_examples=8)
    full = [b for b in (dataset.set_epoch(1), dataset)[1]]
    full_rows = sum(decoded_rows)
    decoded_rows.clear()

    resumed = CacheDataset(cache, batch_size=4, buffer_size=4, window_bytes=2000, run_examples=8)
    resumed.set_epoch(1)
    resumed.resume_at(9)
    tail = list(resumed)
    assert_same_batches(tail, full[9:])
    assert 0 < sum(decoded_rows) < full_rows / 2
    assert len(list(resumed)) == 12  # resume_at applies to one iteration only

    with pytest.raises(ConfigError, match=r"resume_at\(13\).*\[0, 12\]"):
        resumed.resume_at(13)


def test_data_stream_resumes_through_resume_at(
    cache: pathlib.Path, decoded_rows: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = DataStream(CacheDataset(cache, batch_size=4, window_bytes=2000, run_examples=8))
    stream.start_pass(1)
    for _ in range(10):
        stream.next_batch()
    plain, tensors = stream.state_dict()
    expected = stream.next_batch()
    assert plain == {"pass_index": 1, "position": 10}

    calls: list[int] = []
    dataset = CacheDataset(cache, batch_size=4, window_bytes=2000, run_examples=8)
    monkeypatch.setattr(
        dataset, "resume_at", lambda p: (calls.append(p), CacheDataset.resume_at(dataset, p))
    )
    resumed = DataStream(DataLoader(dataset, batch_size=None))
    decoded_rows.clear()
    resumed.load_state_dict(plain, tensors)
    assert calls == [10] and resumed.position == 10
    assert_same_batches([resumed.next_batch()], [expected])
    assert len(resumed.next_batch()["example_ids"]) == 1  # batch 11, the last of 45 examples
    assert resumed.next_batch()["example_ids"] == dataset.example_order(2)[:4]  # next pass
    assert resumed.pass_index == 2


# ------------------------------------------------------------------------ batch contents


def test_teacher_features_are_padded_to_the_batch_and_masks_match(cache: pathlib.Path) -> None:
    reader = open_cache(cache)
    batch = next(
        iter(CacheDataset(cache, batch_size=6, pad_id=7, window_bytes=2000, run_examples=8))
    )
    student, teacher, cached = batch["student"], batch["teacher"], batch["teacher_cache"]
    lengths = [reader.get(i)["length"] for i in batch["example_ids"]]
    width = max(lengths)
    assert student["input_ids"].shape == (6, width) and min(lengths) < width
    assert student["attention_mask"].sum(1).tolist() == lengths
    assert torch.equal(cached["inputs_mask"], student["attention_mask"])
    assert torch.equal(teacher["input_ids"], student["input_ids"])
    assert set(cached) == {"logits", "hidden", "attention", "inputs_mask"}
    assert cached["hidden"][1].shape == (6, 16) and cached["attention"][0] is None
    assert cached["attention"][1].shape == (6, 2, width, width)
    for b, example_id in enumerate(batch["example_ids"]):
        stored, n = reader.get(example_id), lengths[b]
        features = stored["features"]
        assert student["input_ids"][b, :n].tolist() == stored["input_ids"].tolist()
        assert (student["input_ids"][b, n:] == 7).all()
        assert student["labels"][b].item() == stored["label"]
        torch.testing.assert_close(cached["logits"][b], torch.from_numpy(features["logits"][0]))
        for layer in (0, 2):
            hidden = cached["hidden"][layer][b]
            torch.testing.assert_close(hidden[:n], torch.from_numpy(features[f"hidden.{layer}"]))
            assert (hidden[n:] == 0).all()
        torch.testing.assert_close(
            cached["hidden"][1][b], torch.from_numpy(features["hidden_cls.1"][0])
        )
        attention = cached["attention"][1][b]
        expected = restore_shape("attention.1", features["attention.1"], n)
        torch.testing.assert_close(attention[:, :n, :n], torch.from_numpy(expected))
        assert (attention[:, n:] == 0).all() and (attention[:, :, n:] == 0).all()


def test_token_level_logits_rows_concatenate_in_batch_order(tmp_path: pathlib.Path) -> None:
    spec = parse_feature_spec("logits,hidden:0", dtype="fp32")
    examples = synthetic_examples(spec, 12, seed=5)
    rng = np.random.default_rng(0)
    for example in examples:  # one logits row per token (a token-classification head)
        rows = synthetic_features(spec, example["length"], rng, logit_rows=example["length"])
        example["features"]["logits"] = rows["logits"]
    reader = open_cache(write_cache(tmp_path / "c", spec, examples))
    batch = next(iter(CacheDataset(reader, batch_size=5)))
    logits, mask = batch["teacher_cache"]["logits"], batch["student"]["attention_mask"]
    assert logits.shape == (int(mask.sum()), 3)
    expected = np.concatenate([reader.get(i)["features"]["logits"] for i in batch["example_ids"]])
    torch.testing.assert_close(logits, torch.from_numpy(expected))
    student_logits = torch.zeros(*mask.shape, 3)  # what a student's logits_mask selects
    student_logits[mask.bool()] = logits
    assert torch.equal(student_logits[mask.bool()], logits)


@pytest.mark.parametrize("reduction", ["raw", "logprobs"])
def test_topk_rebuild_gives_the_stored_topk_probabilities(
    tmp_path: pathlib.Path, reduction: str
) -> None:
    spec = parse_feature_spec(f"logits:{reduction}", dtype="fp32", topk=2, vocab_size=6)
    examples = synthetic_examples(spec, 8, seed=1, num_classes=6)
    reader = open_cache(write_cache(tmp_path / "c", spec, examples))
    batch = next(iter(CacheDataset(reader, batch_size=8, shuffle=False)))
    rebuilt = batch["teacher_cache"]["logits"]  # (8, 6) log-probs
    raw = torch.from_numpy(np.concatenate([e["features"]["logits"] for e in examples]))
    probs = raw.softmax(-1)
    top = probs.topk(2, dim=-1)
    torch.testing.assert_close(rebuilt.exp().gather(1, top.indices), top.values)
    rest = (1 - top.values.sum(-1, keepdim=True)) / 4
    others = torch.ones_like(probs, dtype=torch.bool).scatter_(1, top.indices, False)
    torch.testing.assert_close(rebuilt.exp()[others].view(8, 4), rest.expand(8, 4))
    torch.testing.assert_close(rebuilt.exp().sum(-1), torch.ones(8))

    no_vocab = parse_feature_spec("logits", dtype="fp32", topk=2)
    path = write_cache(tmp_path / "c2", no_vocab, synthetic_examples(no_vocab, 3, num_classes=6))
    with pytest.raises(ConfigError, match="top-2 logits without their vocabulary size"):
        CacheDataset(path, batch_size=2)
    assert next(iter(CacheDataset(path, batch_size=2, num_classes=6)))["teacher_cache"][
        "logits"
    ].shape == (2, 6)


def test_student_items_replace_the_inputs_joined_by_example_id(cache: pathlib.Path) -> None:
    items = {
        example_id: {"input_ids": [101] + [5 + k] * (k % 4) + [102], "labels": k % 2}
        for k, example_id in enumerate(all_ids())
    }
    dataset = CacheDataset(
        cache, batch_size=5, student_items=items, window_bytes=2000, run_examples=8
    )
    batch = next(iter(dataset))
    student, teacher = batch["student"], batch["teacher"]
    for b, example_id in enumerate(batch["example_ids"]):
        ids = items[example_id]["input_ids"]
        assert student["input_ids"][b, : len(ids)].tolist() == ids
        assert student["attention_mask"][b].sum() == len(ids)
        assert student["labels"][b] == items[example_id]["labels"]
    assert teacher["input_ids"].shape[1] == batch["teacher_cache"]["hidden"][0].shape[1]
    assert student["input_ids"].shape[1] == 5

    del items["ex00007"], items["ex00031"]
    with pytest.raises(CacheMismatchError, match=r"lacks 2 selected.*'ex00007', 'ex00031'"):
        CacheDataset(cache, batch_size=5, student_items=items)


def test_example_ids_select_a_subset(cache: pathlib.Path) -> None:
    subset = all_ids()[3:40:3]
    dataset = CacheDataset(
        cache, batch_size=4, example_ids=subset, window_bytes=2000, run_examples=8
    )
    assert len(dataset) == 4
    assert Counter(epoch_ids(dataset)) == Counter(subset)
    with pytest.raises(CacheMismatchError, match=r"2 of the 3 example_ids .*\['nope', 'zzz'\]"):
        CacheDataset(cache, batch_size=4, example_ids=["ex00001", "nope", "zzz"])
    with pytest.raises(CacheMismatchError, match="no examples selected"):
        CacheDataset(cache, batch_size=4, example_ids=[])


def test_the_index_is_read_once_per_shard_before_step_one(
    cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_cache, example_ids(), a subset CacheDataset, require() and the order share one
    parse of each shard's index and one id catalog (it was scanned four times, issue 10)."""
    import cachebrew.cache.read.shard as shard_module
    from cachebrew.cache.read.reader import IdCatalog

    parsed: list[str] = []
    built: list[int] = []
    parse, build = shard_module.parse_index, IdCatalog.build

    def counting_parse(data: bytes, where: str) -> Any:
        parsed.append(where)
        return parse(data, where)

    def counting_build(ids_per_shard: Any) -> IdCatalog:
        built.append(len(ids_per_shard))
        return build(ids_per_shard)

    monkeypatch.setattr(shard_module, "parse_index", counting_parse)
    monkeypatch.setattr(IdCatalog, "build", staticmethod(counting_build))
    reader = open_cache(cache)
    ids = reader.example_ids()
    train = ids[::2]
    reader.require(["hidden.0"], example_ids=ids)
    dataset = CacheDataset(
        reader, batch_size=4, example_ids=train, window_bytes=2000, run_examples=8
    )
    CacheDataset(reader, batch_size=4, example_ids=ids[1::2], window_bytes=2000, run_examples=8)
    assert sorted(dataset.example_order()) == sorted(train)
    assert len(parsed) == reader.num_shards == 5 and len(set(parsed)) == 5
    assert built == [5]
    assert reader.get("ex00044")["example_id"] == "ex00044" and built == [5]


def test_online_mode_decodes_no_features(cache: pathlib.Path, decoded_rows: list[int]) -> None:
    online = CacheDataset(
        cache, batch_size=4, teacher_cache=False, window_bytes=2000, run_examples=8
    )
    batches = list(online)
    assert decoded_rows == []
    assert set(batches[0]) == {"student", "teacher", "example_ids"}
    assert set(batches[0]["teacher"]) == {"input_ids", "attention_mask"}
    assert [i for b in batches for i in b["example_ids"]] == CacheDataset(
        cache, batch_size=4, window_bytes=2000, run_examples=8
    ).example_order()
    assert online.teacher_forwards == 0


def test_token_type_ids_and_labels() -> None:
    ids = torch.tensor([[2, 5, 3, 6, 3, 0], [2, 5, 6, 3, 0, 0]])
    assert token_type_ids(ids, torch.tensor([5, 4]), sep_id=3).tolist() == [
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    tokens = collate_labels([np.array([1, 2]), np.array([0, 1, 2])], ["a", "b"], 4)
    assert tokens.tolist() == [[1, 2, -100, -100], [0, 1, 2, -100]]
    assert collate_labels([0.5, 1.5], ["a", "b"], 4).dtype == torch.float32
    assert collate_labels([None, None], ["a", "b"], 4) is None


def test_invalid_arguments_are_reported_together(cache: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"batch_size=0.*\n.*buffer_size=-1.*\n.*rank=2"):
        CacheDataset(cache, batch_size=0, buffer_size=-1, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="needs sep_id"):
        CacheDataset(cache, batch_size=2, with_token_type_ids=True)
    with pytest.raises(ConfigError, match=r"prefetch=-1: expected an integer >= 0"):
        CacheDataset(cache, batch_size=2, prefetch=-1)
    with pytest.raises(CacheMismatchError, match="no full batch of 64"):
        CacheDataset(cache, batch_size=64, drop_last=True)


def test_reduced_attention_layout(tmp_path: pathlib.Path) -> None:
    both = parse_feature_spec("attention_sum:1,attention_mean:1", dtype="fp32")
    path = write_cache(tmp_path / "a", both, synthetic_examples(both, 3))
    with pytest.raises(CacheMismatchError, match=r"both attention_sum and attention_mean.*\[1\]"):
        CacheDataset(path, batch_size=2)

    spec = parse_feature_spec("attention:1,attention_sum:1,attention_mean:0", dtype="fp32")
    path = write_cache(tmp_path / "b", spec, synthetic_examples(spec, 3))
    batch = next(iter(CacheDataset(path, batch_size=3)))
    attention = batch["teacher_cache"]["attention"]
    width = batch["student"]["input_ids"].shape[1]
    assert attention[0].shape == (3, width, width)  # head-mean only: (B, L, L)
    assert attention[1].shape == (3, 2, width, width)  # the full attention wins


def test_prefetch_gives_the_same_batches_and_stops_with_the_consumer(
    cache: pathlib.Path,
) -> None:
    def batches(prefetch: int) -> list[dict[str, Any]]:
        dataset = CacheDataset(cache, batch_size=4, seed=5, prefetch=prefetch)
        dataset.set_epoch(1)
        return list(dataset)

    plain, ahead = batches(0), batches(2)
    assert len(plain) == len(ahead) and all(same(a, b) for a, b in zip(plain, ahead, strict=True))
    iterator = iter(CacheDataset(cache, batch_size=4, prefetch=1))
    next(iterator)
    iterator.close()  # what the loop does when it stops at num_steps
    assert not any(t.name == "cachebrew-prefetch" for t in threading.enumerate())


def test_prefetch_raises_a_corrupt_chunk_in_the_consumer(
    tmp_path: pathlib.Path, flip_chunk_byte: Callable[[pathlib.Path, int, str], None]
) -> None:
    path = write_cache(tmp_path / "cache", SPEC, synthetic_examples(SPEC, NUM_EXAMPLES, seed=3))
    flip_chunk_byte(path, 3, "hidden.2")
    dataset = CacheDataset(path, batch_size=4, shuffle=False, prefetch=2)
    with pytest.raises(CacheCorruptError, match="shard 3"):
        list(dataset)
