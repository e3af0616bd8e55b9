"""Data loss must never happen: the writer owns its output, and only what cachebrew wrote goes."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_helpers import Outcome, precompute_args, snapshot

from cachebrew.cache import FeatureSpec, parse_feature_spec
from cachebrew.cache.format.storage import CacheLocation
from cachebrew.cache.write.ownership import LOCK, CacheLockedError, WriterLock
from cachebrew.cache.write.writer import CacheWriter, remove_cache
from cachebrew.errors import CacheError

SPEC: FeatureSpec = parse_feature_spec("logits", dtype="fp32")


def _writer(path: Path, **kwargs: object) -> CacheWriter:
    return CacheWriter(path, SPEC, teacher_info={"class": "T"}, corpus_fingerprint="c", **kwargs)


# ----------------------------------------------------------------- foreign directories


FOREIGN_LAYOUTS = {
    "webdataset tar under shards/": {"shards/webdataset/part-0.tar": b"tar"},
    "a user's file in shards/00000/": {"shards/00000/notes.txt": b"mine"},
    "a user's folder shards/00001/": {"shards/00001/data/x.bin": b"\x00"},
    "a README beside shards/": {"README.md": b"# mine", "shards/00000/zarr.json": b"{}"},
    "a _staging of the user's": {"_staging/keep.txt": b"keep"},
}


def _plant(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.mark.parametrize("flag", ["", "--overwrite"])
@pytest.mark.parametrize("layout", sorted(FOREIGN_LAYOUTS))
def test_precompute_refuses_a_directory_that_is_not_a_cache(
    cli: Callable[..., Outcome],
    tiny_teacher_dir: Path,
    tiny_corpus_jsonl: Path,
    tmp_path: Path,
    layout: str,
    flag: str,
) -> None:
    out = tmp_path / "out"
    _plant(out, FOREIGN_LAYOUTS[layout])
    before = snapshot(out)
    result = cli(*precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out, *filter(None, [flag])))
    assert result.code == 1
    assert "not a cachebrew cache" in result.error_line and str(out) in result.error_line
    assert "Traceback" not in result.err
    assert snapshot(out) == before  # nothing removed, nothing replaced
    assert sorted(p.name for p in out.iterdir()) == sorted({r.split("/")[0] for r in before})


@pytest.mark.parametrize(
    "planted",
    ["shards/00000/notes.txt", "shards/extra.bin", "_done/mine.json", "userdata.csv"],
)
def test_overwrite_of_a_cache_with_foreign_files_removes_nothing(
    cli: Callable[..., Outcome],
    tiny_teacher_dir: Path,
    tiny_corpus_jsonl: Path,
    cache_copy: Path,
    planted: str,
) -> None:
    _plant(cache_copy, {planted: b"the user's"})
    before = snapshot(cache_copy)
    args = precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, cache_copy, "--overwrite")
    result = cli(*args)
    assert result.code == 1
    assert "files cachebrew did not write" in result.error_line and planted in result.error_line
    assert snapshot(cache_copy) == before


def test_overwrite_of_a_real_cache_rebuilds_it_and_leaves_no_lock(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, cache_copy: Path
) -> None:
    args = precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, cache_copy, "--overwrite")
    result = cli(*args, "--label-field", "label")
    assert result.code == 0, result.err
    assert json.loads((cache_copy / "manifest.json").read_text())["totals"]["num_examples"] == 40
    assert not (cache_copy / LOCK).exists()


def test_a_complete_cache_without_overwrite_is_refused_unchanged(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, cache_copy: Path
) -> None:
    before = snapshot(cache_copy)
    result = cli(*precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, cache_copy))
    assert result.code == 1 and "already holds a complete cache" in result.error_line
    assert snapshot(cache_copy) == before


def test_out_that_is_a_file_is_refused(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache.bin"
    out.write_bytes(b"precious")
    result = cli(*precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out, "--overwrite"))
    assert result.code == 1 and "is a file, not a directory" in result.error_line
    assert out.read_bytes() == b"precious"


def test_publish_never_replaces_an_existing_shard_folder(tmp_path: Path) -> None:
    """Even past the directory check (e.g. created mid-run), a shard folder is not replaced."""
    import numpy as np

    out = tmp_path / "cache"
    with pytest.raises(CacheError, match="refusing to replace it"):
        with _writer(out, shard_size=2) as writer:
            _plant(out, {"shards/00000/mine.txt": b"mine"})
            for i in range(2):
                logits = np.zeros((1, 3), np.float32)
                writer.add(f"x{i}", {"logits": logits}, input_ids=[1, 2])
    assert (out / "shards/00000/mine.txt").read_bytes() == b"mine"
    assert not (out / "manifest.json").exists()


def test_remove_cache_refuses_foreign_files_and_removes_a_clean_cache(
    cache_copy: Path, tmp_path: Path
) -> None:
    _plant(cache_copy, {"shards/keep.txt": b"k"})
    before = snapshot(cache_copy)
    with pytest.raises(CacheError, match=r"did not write: \['shards/keep.txt'\]"):
        remove_cache(cache_copy)
    assert snapshot(cache_copy) == before
    (cache_copy / "shards/keep.txt").unlink()
    remove_cache(cache_copy)
    assert list(cache_copy.iterdir()) == []
    plain = tmp_path / "plain"
    _plant(plain, {"a.txt": b"a"})
    with pytest.raises(CacheError, match="not a cachebrew cache"):
        remove_cache(plain)
    assert (plain / "a.txt").read_bytes() == b"a"


# ----------------------------------------------------------------- the writer lock


def _hold_lock(path: str, ready: multiprocessing.synchronize.Event, seconds: float) -> None:
    with WriterLock(CacheLocation(path)):
        ready.set()
        time.sleep(seconds)


def _locked_elsewhere(path: Path, seconds: float) -> multiprocessing.Process:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    process = context.Process(target=_hold_lock, args=(str(path), ready, seconds))
    process.start()
    assert ready.wait(10)
    return process


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    holder = _locked_elsewhere(out, 3.0)
    try:
        with pytest.raises(CacheLockedError) as caught:
            with _writer(out):
                pass
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert "--wait" in message
        assert not (out / "_run.json").exists()  # the refused writer wrote nothing
    finally:
        holder.terminate()
        holder.join()


def test_wait_queues_behind_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    holder = _locked_elsewhere(out, 0.6)
    started = time.monotonic()
    with _writer(out, wait_seconds=30.0) as writer:
        assert time.monotonic() - started >= 0.3
        assert writer.completed_shards() == []
    holder.join()
    assert (out / "manifest.json").exists() and not (out / LOCK).exists()


def test_a_sigkilled_holder_releases_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    holder = _locked_elsewhere(out, 60.0)
    os.kill(holder.pid, 9)
    holder.join()
    assert (out / LOCK).exists()  # the file stays; the kernel dropped the lock
    with _writer(out):
        pass
    assert (out / "manifest.json").exists()


def test_cli_second_precompute_exits_1_with_the_holder(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    holder = _locked_elsewhere(out, 30.0)
    try:
        result = cli(*precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out))
    finally:
        holder.terminate()
        holder.join()
    assert result.code == 1 and f"pid {holder.pid}" in result.error_line
    assert sorted(p.name for p in out.iterdir()) == [LOCK]


# ----------------------------------------------------------------- distill --out


@pytest.mark.parametrize("where", [".", "runs/a", "shards"])
def test_distill_out_equal_to_or_inside_the_cache_is_refused(
    cli: Callable[..., Outcome], cache_copy: Path, student_json: Path, where: str
) -> None:
    before = snapshot(cache_copy)
    out = (cache_copy / where).resolve()
    args = ["distill", "--cache", cache_copy, "--student", student_json, "--out", out]
    result = cli(*args, "--quiet", "--set", "num_steps=1")
    assert result.code == 1 and "into the cache" in result.error_line
    assert "choose an out outside it" in result.error_line
    assert snapshot(cache_copy) == before
    assert not (cache_copy / "checkpoints").exists()


def test_distill_out_beside_the_cache_trains(
    cli: Callable[..., Outcome], cache_copy: Path, student_json: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache-run"  # a sibling whose name starts like the cache's
    args = ["distill", "--cache", cache_copy, "--student", student_json, "--out", out]
    result = cli(*args, "--quiet", "--set", "num_steps=1", "--set", "batch_size=8")
    assert result.code == 0, result.err
    assert (out / "metrics.json").exists()
    shutil.rmtree(out)
