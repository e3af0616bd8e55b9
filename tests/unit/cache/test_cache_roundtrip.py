"""Write a cache from random ragged features, read it back: values, ids, streaming, manifest."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import fsspec
import numpy as np
import pytest
from synthetic_cache import synthetic_examples, write_examples

from cachebrew.cache import CacheWriter, describe_cache, open_cache, parse_feature_spec
from cachebrew.cache.format.shapes import restore_shape
from cachebrew.cache.write.prepare import prepare_example

SPEC_TEXT = "logits:logprobs,hidden:0,2,hidden_cls:2,attention:1,attention_sum:1,attention_mean:1"
# Max error relative to the row's largest |value| (fp16/bf16: half an ulp; int8: half a step).
TOLERANCE = {"fp32": 0.0, "fp16": 2**-11, "bf16": 2**-8, "int8": 1 / 254}


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://cachebrew-test-{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture(params=["local", "memory"])
def cache_path(request: pytest.FixtureRequest, tmp_path, memory_url: str) -> str:
    return str(tmp_path / "cache") if request.param == "local" else memory_url


def _writer(path: str, spec, **kwargs) -> CacheWriter:
    kwargs.setdefault("shard_size", 5)
    kwargs.setdefault("chunk_bytes", 4096)  # several chunks per shard, crossing examples
    return CacheWriter(
        path, spec, teacher_info={"class": "Tiny"}, corpus_fingerprint="corpus-1", **kwargs
    )


def _assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == np.float32
    if dtype == "fp32":
        np.testing.assert_array_equal(actual, expected)
        return
    row_max = np.abs(expected).max(axis=1, keepdims=True)
    bound = np.abs(expected) if dtype in ("fp16", "bf16") else row_max
    assert np.all(np.abs(actual - expected) <= bound * TOLERANCE[dtype] + 1e-7)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_round_trip_all_features(cache_path: str, dtype: str) -> None:
    spec = parse_feature_spec(SPEC_TEXT, dtype=dtype)
    examples = synthetic_examples(spec, 23, seed=1)
    with _writer(cache_path, spec) as writer:
        write_examples(writer, examples)
    reader = open_cache(cache_path)
    assert reader.num_examples == 23 and reader.num_shards == 5
    assert reader.example_ids() == [e["example_id"] for e in examples]
    for example in examples:
        got = reader.get(example["example_id"])
        expected = prepare_example(spec, example["features"], example["length"])
        assert sorted(got["features"]) == sorted(expected)
        for name, value in expected.items():
            _assert_close(got["features"][name], value, dtype)
        assert got["length"] == example["length"]
        assert got["label"] == example["label"]
        np.testing.assert_array_equal(got["input_ids"], example["input_ids"])
        assert got["features"]["hidden.0"].shape == (example["length"], 16)


def test_int8_hidden_and_logits(tmp_path) -> None:
    spec = parse_feature_spec("logits,hidden:0", dtype="int8")
    examples = synthetic_examples(spec, 12, seed=2)
    with _writer(str(tmp_path / "c"), spec) as writer:
        write_examples(writer, examples)
    reader = open_cache(tmp_path / "c")
    assert set(reader.manifest["arrays"]) == {
        "logits",
        "logits.scale",
        "hidden.0",
        "hidden.0.scale",
    }
    for example in examples:
        got = reader.get(example["example_id"])["features"]
        expected = prepare_example(spec, example["features"], example["length"])
        assert set(got) == {"logits", "hidden.0"}
        for name, value in expected.items():
            _assert_close(got[name], value, "int8")


def test_topk_logits_token_level(tmp_path) -> None:
    spec = parse_feature_spec("logits:logprobs", topk=3, vocab_size=50)
    examples = synthetic_examples(spec, 7, seed=3, num_classes=50, logit_rows=4)
    with _writer(str(tmp_path / "c"), spec) as writer:
        write_examples(writer, examples)
    reader = open_cache(tmp_path / "c")
    assert reader.manifest["arrays"]["logits.topk_ids"]["stored_dtype"] == "uint16"
    got = reader.get("ex00004")["features"]
    logits = examples[4]["features"]["logits"]
    ids = np.argsort(-logits, axis=1)[:, :3]
    np.testing.assert_array_equal(got["logits.topk_ids"], ids)
    lse = np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got["logits.logsumexp"], lse, rtol=1e-6)
    expected = np.take_along_axis(logits, ids, axis=1) - lse
    np.testing.assert_allclose(got["logits.topk_values"], expected, rtol=2**-10, atol=1e-3)


def test_streaming_yields_every_example_once(cache_path: str) -> None:
    spec = parse_feature_spec(SPEC_TEXT)
    examples = synthetic_examples(spec, 31, seed=4, max_length=20)
    with _writer(cache_path, spec, shard_size=8) as writer:
        write_examples(writer, examples)
    reader = open_cache(cache_path)
    by_id = {e["example_id"]: e for e in examples}
    # A small window forces several windows per shard and examples straddling them.
    seen = []
    for got in reader.iter_examples(shard_order=[3, 1, 0, 2], window_bytes=1024):
        seen.append(got["example_id"])
        want = reader.get(got["example_id"])
        for name, value in want["features"].items():
            np.testing.assert_array_equal(got["features"][name], value)
        length = by_id[got["example_id"]]["length"]
        assert restore_shape("attention.1", got["features"]["attention.1"], length).shape == (
            2,
            length,
            length,
        )
    assert sorted(seen) == sorted(by_id) and len(seen) == 31
    assert [e["example_id"] for e in reader.iter_shard(1)] == [f"ex{i:05d}" for i in range(8, 16)]


def test_manifest_and_describe(cache_path: str) -> None:
    spec = parse_feature_spec("logits:logprobs,hidden:0,2,attention_sum:1")
    with _writer(cache_path, spec, tokenizer_hash="tok-1", extra={"note": "x"}) as writer:
        write_examples(writer, synthetic_examples(spec, 12, seed=5))
    reader = open_cache(cache_path)
    manifest = reader.manifest
    assert manifest["format_version"] == 1
    assert manifest["teacher"] == {"class": "Tiny"}
    assert (manifest["corpus_fingerprint"], manifest["tokenizer_hash"]) == ("corpus-1", "tok-1")
    assert manifest["extra"] == {"note": "x"} and manifest["label_type"] == "int"
    assert manifest["checksums"] == {"chunk": "crc32", "index": "sha256"}
    assert manifest["codecs"] == {
        "lz4-bitshuffle": {
            "name": "blosc",
            "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
        }
    }
    assert [s["num_examples"] for s in manifest["shards"]] == [5, 5, 2]
    assert all(len(s["index_sha256"]) == 64 and s["bytes"] > 0 for s in manifest["shards"])
    totals = manifest["totals"]
    assert totals["num_examples"] == 12
    assert totals["bytes_on_disk"] == sum(s["bytes"] for s in manifest["shards"])
    assert set(totals["features"]) == {"logits", "hidden", "attention_sum"}
    info = describe_cache(reader)
    for key in ("format_version", "num_examples", "num_shards", "bytes_on_disk", "teacher"):
        assert info[key] == {**manifest, **totals}[key]
    assert info["corpus_fingerprint"] == "corpus-1"
    assert info["bytes_per_example"] == pytest.approx(totals["bytes_on_disk"] / 12)
    hidden = next(f for f in info["features"] if f["name"] == "hidden")
    assert hidden["layers"] == [0, 2] and hidden["dtype"] == "fp16"
    assert hidden["bytes"] > 0 and hidden["compression_ratio"] > 0
    assert hidden["width"] == {"hidden.0": 16, "hidden.2": 16}


def test_labels_of_several_types(tmp_path) -> None:
    spec = parse_feature_spec("logits")
    labels = [[1, 2, 0], None, [0]]
    with _writer(str(tmp_path / "c"), spec) as writer:
        for i, label in enumerate(labels):
            writer.add(f"e{i}", {"logits": np.ones(3)}, input_ids=[1, 2, 3], label=label)
    reader = open_cache(tmp_path / "c")
    assert reader.manifest["label_type"] == "int_list"
    np.testing.assert_array_equal(reader.get("e0")["label"], [1, 2, 0])
    assert reader.get("e1")["label"] is None
    assert reader.get("e2")["length"] == 3


def test_empty_cache(tmp_path) -> None:
    with _writer(str(tmp_path / "c"), parse_feature_spec("logits")):
        pass
    reader = open_cache(tmp_path / "c")
    assert reader.num_examples == 0 and list(reader.iter_examples()) == []
