"""CacheReader checks: manifest validation, chunk/index checksums, require(), verify_all()."""

from __future__ import annotations

import json
import pathlib

import numcodecs
import numpy as np
import pytest
from synthetic_cache import synthetic_examples, write_examples

from cachebrew.cache import (
    CacheWriter,
    feature_spec_from_matches,
    open_cache,
    parse_feature_spec,
)
from cachebrew.errors import CacheCorruptError, CacheError, CacheMismatchError

SPEC = parse_feature_spec("logits:logprobs,hidden:0,4,attention:4")


@pytest.fixture
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "cache"
    with CacheWriter(
        path,
        SPEC,
        teacher_info={"class": "Tiny"},
        corpus_fingerprint="corpus-1",
        shard_size=6,
        chunk_bytes=4096,
    ) as writer:
        write_examples(writer, synthetic_examples(SPEC, 15, seed=11, hidden_size=32))
    return path


def _chunk_file(cache: pathlib.Path, shard: int, array: str, chunk: int) -> pathlib.Path:
    return cache / "shards" / f"{shard:05d}" / array / "c" / str(chunk) / "0"


def test_missing_manifest(tmp_path: pathlib.Path, cache: pathlib.Path) -> None:
    (cache / "manifest.json").unlink()
    with pytest.raises(
        CacheError, match=r"is not a complete cache: no manifest.json.*rerun precompute to resume"
    ):
        open_cache(cache)
    with pytest.raises(CacheError, match="nothing-here does not exist"):
        open_cache(tmp_path / "nothing-here")


def test_unknown_format_version(cache: pathlib.Path) -> None:
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(
        CacheError, match=r"format_version 2 is not supported.*reads format_version 1"
    ):
        open_cache(cache)


def test_undecodable_chunk_names_shard_array_and_ids(cache: pathlib.Path) -> None:
    target = _chunk_file(cache, 1, "hidden.4", 0)
    target.write_bytes(b"\x00garbage" * 10)
    reader = open_cache(cache)
    reader.get("ex00000")  # other shards are fine
    with pytest.raises(CacheCorruptError) as info:
        for _ in reader.iter_shard(1):
            pass
    message = str(info.value)
    assert "shard 1, array 'hidden.4', chunk 0" in message and "cannot be decoded" in message
    assert "examples affected: ['ex0000" in message and "rerun precompute" in message


def test_checksum_mismatch_names_the_overlapping_examples(cache: pathlib.Path) -> None:
    reader = open_cache(cache)
    info = reader.shard(0).meta["arrays"]["hidden.0"]
    rows = info["chunk_rows"]
    wrong = np.ones((rows, info["width"]), dtype=np.float16)  # a valid chunk, wrong values
    codec = numcodecs.Blosc("lz4", 5, numcodecs.Blosc.BITSHUFFLE)  # the default codec's frame
    _chunk_file(cache, 0, "hidden.0", 0).write_bytes(codec.encode(wrong))
    offsets = reader.shard(0).rows["hidden.0"][0]
    expected_ids = [f"ex{i:05d}" for i in range(6) if offsets[i] < rows]
    with pytest.raises(
        CacheCorruptError, match=r"shard 0, array 'hidden.0', chunk 0 .*fails its crc32 check"
    ) as err:
        reader.get("ex00000")
    assert f"examples affected: {expected_ids}" in str(err.value)
    report = open_cache(cache).verify_all()
    assert not report["ok"] and report["shards"] == 2 and len(report["problems"]) == 1
    assert "shard 0, array 'hidden.0'" in report["problems"][0]


def test_tampered_index(cache: pathlib.Path) -> None:
    index = cache / "shards" / "00002" / "index.arrow"
    index.write_bytes(index.read_bytes() + b"\x00")
    reader = open_cache(cache)
    with pytest.raises(
        CacheCorruptError, match=r"shard 2: .*index.arrow does not match the sha256"
    ):
        list(reader.iter_shard(2))


def test_verify_all_clean(cache: pathlib.Path) -> None:
    report = open_cache(cache).verify_all()
    assert report["ok"] and report["shards"] == 3 and report["problems"] == []
    assert report["chunks"] >= 9 and report["bytes"] > 0


def test_require_lists_what_is_stored(cache: pathlib.Path) -> None:
    reader = open_cache(cache)
    reader.require(["hidden:0,4", "logits", "attention.4"], widths={"hidden.0": 32})
    with pytest.raises(CacheMismatchError) as info:
        reader.require(["hidden:0,8", "attention_sum.4"])
    message = str(info.value)
    assert "'hidden.8' is not stored" in message and "'attention_sum.4' is not stored" in message
    assert "it stores: logits, hidden.0, hidden.4, attention.4" in message
    with pytest.raises(CacheMismatchError, match=r"'hidden.0' has width 32, the run expects 768"):
        reader.require(["hidden.0"], widths={"hidden.0": 768})
    with pytest.raises(
        CacheMismatchError, match=r"1 example ids are not in the cache, e.g. \['nope'\]"
    ):
        reader.require(["logits"], example_ids=["ex00001", "nope"])


def test_require_a_spec_from_a_config(cache: pathlib.Path) -> None:
    reader = open_cache(cache)
    matches = [{"feature": "hidden", "loss": "hidden_mse", "layer_T": 4}]
    reader.require(feature_spec_from_matches("ce", None, matches))
    with pytest.raises(
        CacheMismatchError, match="raw logits are needed .* but the cache stores log-probs"
    ):
        reader.require(feature_spec_from_matches("mse", None, matches))
    with pytest.raises(
        CacheMismatchError, match=r"hidden_cls is not stored \(needed: hidden_cls.4\)"
    ):
        reader.require(feature_spec_from_matches("ce", None, [{**matches[0], "loss": "pkd"}]))


def test_get_unknown_id(cache: pathlib.Path) -> None:
    with pytest.raises(KeyError, match="example 'nope' is not in the cache"):
        open_cache(cache).get("nope")
