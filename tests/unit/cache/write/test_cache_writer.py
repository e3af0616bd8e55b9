"""CacheWriter lifecycle: manifest last, resume, refusals, disk full, ranks + merge, SIGKILL."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from synthetic_cache import synthetic_examples, write_examples

from cachebrew.cache import CacheWriter, merge_manifest, open_cache, parse_feature_spec
from cachebrew.errors import CacheError, CacheMismatchError, ConfigError

SPEC = parse_feature_spec("logits:logprobs,hidden:0,3,attention_sum:3")
EXAMPLES = synthetic_examples(SPEC, 22, seed=7)


def _writer(path, spec=SPEC, **kwargs) -> CacheWriter:
    kwargs.setdefault("shard_size", 4)
    kwargs.setdefault("corpus_fingerprint", "corpus-1")
    return CacheWriter(path, spec, teacher_info={"class": "Tiny"}, chunk_bytes=4096, **kwargs)


def _contents(path) -> dict[str, dict]:
    """Everything a reader returns, by example id, plus the shard of each id."""
    reader = open_cache(path)
    out = {}
    for shard in range(reader.num_shards):
        for example in reader.iter_shard(shard):
            out[example["example_id"]] = {"shard": shard, **example}
    return out


def _assert_same_contents(a, b) -> None:
    left, right = _contents(a), _contents(b)
    assert left.keys() == right.keys()
    for key, x in left.items():
        y = right[key]
        assert (x["shard"], x["label"], x["length"]) == (y["shard"], y["label"], y["length"])
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
        for name, value in x["features"].items():
            np.testing.assert_array_equal(value, y["features"][name])


class Boom(Exception):
    pass


def test_exception_keeps_shards_and_rerun_resumes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c"
    with pytest.raises(Boom), _writer(path) as writer:
        write_examples(writer, EXAMPLES[:10])  # shards 0, 1 written; 2 examples buffered
        raise Boom
    assert not (path / "manifest.json").exists()
    assert sorted(os.listdir(path / "shards")) == ["00000", "00001"]
    assert os.listdir(path / "_staging") == []
    with pytest.raises(
        CacheError, match=r"not a complete cache.*2 finished shards.*rerun precompute"
    ):
        open_cache(path)

    with _writer(path) as writer:
        assert writer.completed_shards() == [0, 1]
        assert writer.completed_example_ids() == {e["example_id"] for e in EXAMPLES[:8]}
        added = []
        original_add = writer.add
        writer.add = lambda example_id, *a, **k: (
            added.append(example_id),
            original_add(example_id, *a, **k),
        )  # type: ignore[method-assign]
        write_examples(writer, EXAMPLES)
    assert added == [e["example_id"] for e in EXAMPLES[8:]]
    with _writer(tmp_path / "clean") as writer:
        write_examples(writer, EXAMPLES)
    _assert_same_contents(path, tmp_path / "clean")


def test_different_spec_or_corpus_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c"
    with pytest.raises(Boom), _writer(path) as writer:
        write_examples(writer, EXAMPLES[:5])
        raise Boom
    other = parse_feature_spec("logits:logprobs,hidden:0,4,attention_sum:3")
    with pytest.raises(
        CacheMismatchError, match=r"spec: hidden.layers: cache has \[0, 3\], this run has \[0, 4\]"
    ):
        _writer(path, other).__enter__()
    with pytest.raises(
        CacheMismatchError,
        match=r"(?s)corpus_fingerprint: cache has 'corpus-1', this run has 'corpus-2'.*--overwrite",
    ):
        _writer(path, corpus_fingerprint="corpus-2").__enter__()
    with _writer(path, other, overwrite=True) as writer:  # starting over is allowed
        assert writer.completed_shards() == []


def test_complete_cache_needs_overwrite(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c"
    with _writer(path) as writer:
        write_examples(writer, EXAMPLES[:6])
    with pytest.raises(CacheError, match=r"already holds a complete cache.*pass --overwrite"):
        _writer(path).__enter__()
    with _writer(path, overwrite=True) as writer:
        write_examples(writer, EXAMPLES[:3])
    assert open_cache(path).num_examples == 3


def test_refuses_a_directory_that_is_not_a_cache(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match=r"not empty and is not a cachebrew cache.*notes.txt"):
        _writer(tmp_path).__enter__()


def test_disk_full_raises_cache_error_without_manifest(tmp_path: pathlib.Path, monkeypatch) -> None:
    from zarr.storage import LocalStore

    path = tmp_path / "c"
    original_set = LocalStore.set

    async def failing_set(self, key, value):
        if "00001." in str(self.root) and "/c/" in key:  # shard 1's first chunk: disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", failing_set)
    with pytest.raises(
        CacheError, match=r"could not write shard 1 to .*shards/00001: .*No space left"
    ):
        with _writer(path) as writer:
            write_examples(writer, EXAMPLES)
    assert not (path / "manifest.json").exists()
    assert os.listdir(path / "shards") == ["00000"]
    assert os.listdir(path / "_staging") == []


def test_writer_argument_and_input_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"shard_size=0 must be an int in \[1, 1000000\]"):
        _writer(tmp_path / "c", shard_size=0)
    with pytest.raises(ConfigError, match=r"rank=2 must be an int in \[0, world_size=2\)"):
        _writer(tmp_path / "c", rank=2, world_size=2)
    writer = _writer(tmp_path / "c")
    example = EXAMPLES[0]
    with pytest.raises(CacheError, match="use it as `with CacheWriter"):
        writer.add("x", example["features"], input_ids=example["input_ids"])
    with pytest.raises(Boom), writer:
        writer.add("x", example["features"], input_ids=example["input_ids"])
        with pytest.raises(CacheError, match="example 'x' was already written"):
            writer.add("x", example["features"], input_ids=example["input_ids"])
        wide = {**example["features"], "hidden.0": np.zeros((example["length"], 8))}
        with pytest.raises(
            CacheError, match=r"example 'y': 'hidden.0' has width 8, earlier examples 16"
        ):
            writer.add("y", wide, input_ids=example["input_ids"])
        with pytest.raises(
            CacheError, match=r"example 'z': features do not match the spec: missing \['logits'\]"
        ):
            features = {k: v for k, v in example["features"].items() if k != "logits"}
            writer.add("z", features, input_ids=example["input_ids"])
        raise Boom


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_and_merge_equal_one_writer(tmp_path: pathlib.Path, world_size: int) -> None:
    sharded = tmp_path / "ranks"
    for rank in reversed(range(world_size)):
        with _writer(sharded, rank=rank, world_size=world_size) as writer:
            write_examples(writer, EXAMPLES)
        marker = json.loads(
            (sharded / "_done" / f"rank-{rank:05d}-of-{world_size:05d}.json").read_text()
        )
        assert marker["shards"] == list(range(rank, 6, world_size))
        assert not (sharded / "manifest.json").exists()
    manifest = merge_manifest(sharded)
    assert manifest["totals"]["num_examples"] == 22 and len(manifest["shards"]) == 6
    with _writer(tmp_path / "one") as writer:
        write_examples(writer, EXAMPLES)
    _assert_same_contents(sharded, tmp_path / "one")


def test_merge_refuses_unfinished_ranks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c"
    with _writer(path, rank=1, world_size=2) as writer:
        write_examples(writer, EXAMPLES)
    with pytest.raises(CacheError, match=r"ranks \[0\] of 2 have not finished"):
        merge_manifest(path)
    assert not (path / "manifest.json").exists()


def test_misaligned_input_is_caught_at_merge(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c"
    with _writer(path, rank=0, world_size=2) as writer:
        for e in EXAMPLES[:6]:  # ignores owns_position: shard 0 gets 4, shard 2 gets 2
            writer.add(e["example_id"], e["features"], input_ids=e["input_ids"])
    with _writer(path, rank=1, world_size=2):
        pass
    with pytest.raises(CacheError, match=r"shards \[1\] are missing"):
        merge_manifest(path)


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from cachebrew.cache import CacheWriter, parse_feature_spec
    from synthetic_cache import synthetic_examples, write_examples
    spec = parse_feature_spec("logits:logprobs,hidden:0,3,attention_sum:3")
    examples = synthetic_examples(spec, 22, seed=7)
    with CacheWriter(sys.argv[1], spec, teacher_info={"class": "Tiny"}, chunk_bytes=4096,
                     corpus_fingerprint="corpus-1", shard_size=4) as writer:
        write_examples(writer, examples[:13])
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_never_leaves_a_complete_looking_cache(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c"
    repo = pathlib.Path(__file__).resolve().parents[4]
    paths = [str(repo), str(repo / "tests" / "helpers"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], env=env, capture_output=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert not (path / "manifest.json").exists()
    assert sorted(os.listdir(path / "shards")) == ["00000", "00001", "00002"]
    with pytest.raises(CacheError, match="not a complete cache"):
        open_cache(path)
    with _writer(path) as writer:
        assert writer.completed_shards() == [0, 1, 2]
        write_examples(writer, EXAMPLES)
    assert open_cache(path).num_examples == 22
    run = json.loads((path / "_run.json").read_text())
    assert run["shard_size"] == 4 and run["corpus_fingerprint"] == "corpus-1"
