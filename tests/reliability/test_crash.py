"""Crashes and full disks: no manifest that lies, no temporary file left, the rerun resumes."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import Outcome, precompute_args, small_tmpfs

from cachebrew.cache import open_cache


def _leftovers(cache: Path) -> list[str]:
    """Temporary files and unfinished staging entries under ``cache``."""
    temporary = [str(p.relative_to(cache)) for p in cache.rglob("*.tmp-*")]
    staging = cache / "_staging"
    return temporary + ([p.name for p in staging.iterdir()] if staging.is_dir() else [])


def _same_content(a: Path, b: Path) -> None:
    left, right = open_cache(a), open_cache(b)
    assert left.example_ids() == right.example_ids()
    for x, y in zip(left.iter_examples(), right.iter_examples(), strict=True):
        for name, values in x["features"].items():
            np.testing.assert_array_equal(values, y["features"][name])


def test_disk_full_while_writing_the_manifest(
    cli: Callable[..., Outcome],
    tiny_teacher_dir: Path,
    tiny_corpus_jsonl: Path,
    built_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cachebrew.cache.format.storage as storage

    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if str(dst).endswith("manifest.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", replace)
    out = tmp_path / "cache"
    args = precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out, "--label-field", "label")
    result = cli(*args)
    assert result.code == 1 and "No space left on device" in result.error_line
    assert "manifest.json" in result.error_line and "Traceback" not in result.err
    assert not (out / "manifest.json").exists() and _leftovers(out) == []
    monkeypatch.setattr(storage.os, "replace", real_replace)
    resumed = cli(*args)  # space is back: the finished shards are kept, the manifest written
    assert resumed.code == 0, resumed.err
    assert "3 shards kept" in resumed.out
    _same_content(out, built_cache)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB tmpfs (too small for the cache), or skip where this user cannot mount."""
    with small_tmpfs(tmp_path / "small", 96) as mount_point:
        yield mount_point


def test_disk_full_while_writing_shards_on_a_real_small_disk(
    cli: Callable[..., Outcome],
    tiny_teacher_dir: Path,
    tiny_corpus_jsonl: Path,
    built_cache: Path,
    small_disk: Path,
    tmp_path: Path,
) -> None:
    out = small_disk / "cache"
    args = precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out, "--label-field", "label")
    result = cli(*args, "--dtype", "fp32")
    assert result.code == 1 and "No space left on device" in result.error_line
    assert "Traceback" not in result.err
    assert not (out / "manifest.json").exists() and _leftovers(out) == []
    # Moved to a disk with room, the same command resumes from the shards that did fit.
    roomy = tmp_path / "roomy"
    shutil.copytree(out, roomy)
    kept = len(list((roomy / "shards").glob("0000*")))
    roomy_args = precompute_args(
        tiny_teacher_dir, tiny_corpus_jsonl, roomy, "--label-field", "label"
    )
    resumed = cli(*roomy_args, "--dtype", "fp32")
    assert resumed.code == 0, resumed.err
    assert f"{kept} shards kept" in resumed.out
    assert cli("verify", roomy).code == 0


def test_disk_full_while_writing_shards_by_enospc(
    cli: Callable[..., Outcome],
    tiny_teacher_dir: Path,
    tiny_corpus_jsonl: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same fault without a mount: the second shard's array write fails with ENOSPC."""
    import cachebrew.cache.write.shard_writer as shard_writer

    real = shard_writer._write_arrays
    calls = {"n": 0}

    def write_arrays(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shard_writer, "_write_arrays", write_arrays)
    out = tmp_path / "cache"
    result = cli(*precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out))
    assert result.code == 1 and "could not write shard 1" in result.error_line
    assert "No space left on device" in result.error_line
    assert not (out / "manifest.json").exists() and _leftovers(out) == []
    assert [p.name for p in (out / "shards").iterdir()] == ["00000"]


def test_sigkill_mid_precompute_leaves_no_manifest_and_resumes_identically(
    cli: Callable[..., Outcome],
    tiny_teacher_dir: Path,
    tiny_corpus_jsonl: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "cache"
    args = precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out, "--label-field", "label")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cachebrew", *args, "--batch-size", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out / "shards/00000/index.arrow").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the first shard never appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if (out / "manifest.json").exists():
        pytest.skip("the run finished before the kill (machine too fast for this timing)")
    assert cli("inspect", out).code == 1  # not a cache until the manifest is written
    result = cli(*args, "--batch-size", "1")
    assert result.code == 0, result.err
    assert _leftovers(out) == []
    # The reference uses the same teacher batch size: other batch sizes pad differently, and
    # CPU matmuls of other shapes may differ in the last bit of an fp16 value.
    reference = tmp_path / "reference"
    ref_args = precompute_args(
        tiny_teacher_dir, tiny_corpus_jsonl, reference, "--label-field", "label"
    )
    assert cli(*ref_args, "--batch-size", "1").code == 0
    _same_content(out, reference)
