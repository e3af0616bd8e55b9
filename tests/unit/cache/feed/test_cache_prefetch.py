"""The prefetch thread runs on into the next epoch: same batches, the next epoch made ahead,
a thread that stops with its consumer, its dataset, or an epoch that was not the next one."""

from __future__ import annotations

import gc
import pathlib
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cache_helpers import clone, same, write_cache
from synthetic_cache import synthetic_examples

from cachebrew.cache import parse_feature_spec
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.errors import CacheCorruptError

SPEC = parse_feature_spec("logits:logprobs,hidden:0,2,attention:1", dtype="fp16")
EXAMPLES = synthetic_examples(SPEC, 45, seed=3)
WAIT_S = 10  # every wait has a timeout


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_cache(tmp_path_factory.mktemp("prefetch") / "cache", SPEC, EXAMPLES)


def epochs(dataset: CacheDataset, order: list[int | tuple[int, int]]) -> list[list[Any]]:
    """The batches of each epoch in ``order`` ((epoch, resume position) for a resumed one)."""
    out = []
    for item in order:
        epoch, position = item if isinstance(item, tuple) else (item, 0)
        dataset.set_epoch(epoch)
        if position:
            dataset.resume_at(position)
        out.append([clone(b) for b in dataset])
    return out


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cachebrew-prefetch"]


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("prefetch", [1, 3])
@pytest.mark.parametrize("decode_threads", [1, 2])
def test_batches_equal_the_unprefetched_ones_over_epochs_jumps_and_resumes(
    cache: pathlib.Path, prefetch: int, decode_threads: int
) -> None:
    order: list[int | tuple[int, int]] = [0, 1, 2, 5, (6, 3), 7, 3]
    options = {"batch_size": 4, "seed": 2, "decode_threads": decode_threads}
    plain = epochs(CacheDataset(cache, **options), order)
    ahead = epochs(CacheDataset(cache, prefetch=prefetch, **options), order)
    assert [len(e) for e in plain] == [12, 12, 12, 12, 9, 12, 12]
    assert same(plain, ahead)


def test_the_next_epoch_is_made_before_it_is_asked_for(
    cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[int, int, str]] = []
    batches = CacheDataset._batches

    def recording(self: CacheDataset, epoch: int, indices: range) -> Any:
        made.append((epoch, indices.start, threading.current_thread().name))
        return batches(self, epoch, indices)

    monkeypatch.setattr(CacheDataset, "_batches", recording)
    dataset = CacheDataset(cache, batch_size=4, prefetch=1)
    first = list(dataset)
    assert wait_until(lambda: len(made) == 2)  # the thread went on into epoch 1
    assert made == [(0, 0, "cachebrew-prefetch"), (1, 0, "cachebrew-prefetch")]
    (thread,) = prefetch_threads()
    dataset.set_epoch(1)
    second = [clone(b) for b in dataset]
    assert prefetch_threads() == [thread]  # taken over, not restarted
    assert made[:2] == [(0, 0, "cachebrew-prefetch"), (1, 0, "cachebrew-prefetch")]
    assert made[2:] in ([], [(2, 0, "cachebrew-prefetch")])  # nothing made twice or in the caller
    reference = CacheDataset(cache, batch_size=4)
    assert same(second, epochs(reference, [1])[0])
    assert len(first) == 12


def test_the_thread_stops_with_an_early_consumer_and_with_its_dataset(cache: pathlib.Path) -> None:
    dataset = CacheDataset(cache, batch_size=4, prefetch=1)
    iterator = iter(dataset)
    next(iterator)
    iterator.close()  # what the loop does when it stops at num_steps
    assert not prefetch_threads()
    list(dataset)  # exhausted: the thread runs on into epoch 1 ...
    assert len(prefetch_threads()) == 1
    del dataset  # ... until its dataset is collected
    gc.collect()
    assert wait_until(lambda: not prefetch_threads())


def test_an_error_in_the_next_epoch_reaches_the_consumer_there(
    tmp_path: pathlib.Path, flip_chunk_byte: Callable[[pathlib.Path, int, str], None]
) -> None:
    path = write_cache(tmp_path / "cache", SPEC, EXAMPLES)
    dataset = CacheDataset(path, batch_size=4, prefetch=1)  # a mixing buffer over all 45
    iterator = iter(dataset)
    first = [next(iterator)]  # its first batch waits for every chunk: epoch 0 is decoded
    flip_chunk_byte(path, 3, "hidden.2")  # a changed file is checked again on its next read
    first += list(iterator)
    assert len(first) == 12
    dataset.set_epoch(1)
    with pytest.raises(CacheCorruptError, match="shard 3"):
        list(dataset)
    assert wait_until(lambda: not prefetch_threads())


def test_a_dataset_that_prefetched_still_pickles_for_dataloader_workers(
    cache: pathlib.Path,
) -> None:
    dataset = CacheDataset(cache, batch_size=4, seed=1, prefetch=1)
    dataset.set_epoch(1)
    expected = [clone(b) for b in dataset]
    copy = pickle.loads(pickle.dumps(dataset))
    copy.prefetch = 0  # a worker's copy iterates without a thread
    copy.set_epoch(1)
    assert same([clone(b) for b in copy], expected)


def test_two_live_iterators_of_one_dataset_do_not_disturb_each_other(
    cache: pathlib.Path,
) -> None:
    options = {"batch_size": 4, "seed": 6}
    reference = CacheDataset(cache, **options)
    expected = epochs(reference, [0, 1])
    dataset = CacheDataset(cache, prefetch=1, **options)
    first = iter(dataset)  # epoch 0, e.g. a peek the caller kept
    got_first = [clone(next(first))]
    dataset.set_epoch(1)
    second = [clone(b) for b in dataset]  # a second iterator while the first is live
    got_first += [clone(b) for b in first]
    assert same(got_first, expected[0])
    assert same(second, expected[1])
