"""docs/format.md is complete: a reader written from it alone (tests/helpers/plain_reader.py,
plain json + numpy + zarr + pyarrow) reads every kind of cache as cachebrew does."""

from __future__ import annotations

import ast
import pathlib
from dataclasses import replace

import numpy as np
import plain_reader
import pytest
import torch
from synthetic_cache import synthetic_examples, write_examples

from cachebrew.cache import CacheWriter, open_cache, parse_feature_spec
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.format.lm_head import write_head
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.format.storage import CacheLocation
from cachebrew.cache.logits.exact import LMHead
from cachebrew.cache.logits.topk_codes import decode_values

ALL_KINDS = "logits:logprobs,hidden:0,hidden_cls:1,attention:1,attention_sum:1,attention_mean:1"
VOCAB = 300


def _write(path: pathlib.Path, spec: FeatureSpec, examples: list[dict], head=None) -> None:
    with CacheWriter(
        path, spec, teacher_info={"class": "Tiny"}, corpus_fingerprint="c", shard_size=5,
        chunk_bytes=4096,
    ) as writer:  # fmt: skip
        if head is not None:
            write_head(CacheLocation(str(path)), head)
        write_examples(writer, examples)


def _logits_spec(mode: str | None, dtype: str = "fp16", layout: int | None = None, topk=None):
    logits = parse_feature_spec("logits", dtype=dtype).get("logits")
    logits = replace(logits, logits_mode=mode, vocab_size=VOCAB, topk_layout=layout, topk=topk)
    return FeatureSpec((logits,))


def _lm_examples(spec: FeatureSpec, width: int = VOCAB) -> list[dict]:
    examples = synthetic_examples(spec, 12, logit_rows=4, num_classes=width, seed=3)
    for example in examples:  # token-level rows: one per position of a 4-token example
        example["length"], example["input_ids"] = 4, example["input_ids"][:4]
    return examples


def _compare_with_reader(path: pathlib.Path) -> dict:
    plain = plain_reader.read_cache(path)
    reader = open_cache(path)
    assert sorted(plain) == sorted(reader.example_ids())
    for example_id, example in plain.items():
        ours = reader.get(example_id)
        assert example["label"] == ours["label"]
        assert np.array_equal(example["input_ids"], ours["input_ids"])
        assert example["length"] == ours["length"]
        assert sorted(example["arrays"]) == sorted(ours["features"])
        for name, values in example["arrays"].items():
            expected = ours["features"][name]
            if name.endswith("topk_values") and expected.dtype == np.uint8:  # a q-code
                expected = decode_values(torch.from_numpy(expected), _code(reader)).numpy()
            np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7, err_msg=name)
    return plain


def _code(reader) -> str:
    return str(reader.spec.get("logits").logits_mode).rsplit(":", 1)[1]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
def test_every_feature_kind_in_every_dtype(tmp_path: pathlib.Path, dtype: str) -> None:
    spec = parse_feature_spec(ALL_KINDS, dtype=dtype if dtype != "int8" else "fp16")
    if dtype == "int8":  # attention has no int8 (per-value scales); the rest takes it
        spec = FeatureSpec(
            tuple(f if f.kind.startswith("attention") else replace(f, dtype="int8") for f in spec)
        )
    _write(tmp_path / "c", spec, synthetic_examples(spec, 12))
    plain = _compare_with_reader(tmp_path / "c")
    # and against the batches CacheDataset builds (corpus order, one example a batch)
    for batch in CacheDataset(tmp_path / "c", batch_size=1, shuffle=False):
        example = plain[batch["example_ids"][0]]
        arrays, length = example["arrays"], example["length"]
        cached = batch["teacher_cache"]
        np.testing.assert_allclose(cached["logits"][0], arrays["logits"][0], rtol=1e-6)
        np.testing.assert_allclose(cached["hidden"][0][0], arrays["hidden.0"], rtol=1e-6)
        attention = arrays["attention.1"].reshape(-1, length, length)  # §3.1: (H, L, L)
        np.testing.assert_allclose(cached["attention"][1][0], attention, rtol=1e-6)


@pytest.mark.parametrize(
    ("mode", "dtype", "layout"),
    [
        ("topk:8", "fp16", 2),
        ("topk:8", "bf16", 2),
        ("topk:8", "fp16", 1),
        ("topk:8:q4", "fp16", 2),
        ("topk:8:q5", "fp16", 2),
        ("topk:8:q8", "fp16", 2),
        ("sample:6", "fp16", None),
        ("sample:300", "fp16", None),
    ],
)
def test_sparse_logits_modes(tmp_path: pathlib.Path, mode: str, dtype: str, layout) -> None:
    spec = _logits_spec(mode, dtype, layout)
    _write(tmp_path / "c", spec, _lm_examples(spec))
    plain = _compare_with_reader(tmp_path / "c")
    for batch in CacheDataset(tmp_path / "c", batch_size=1, shuffle=False, num_classes=VOCAB):
        arrays = plain[batch["example_ids"][0]]["arrays"]
        rows = batch["teacher_cache"]["logits"]  # SparseLogits, entries by descending value
        if mode.startswith("topk"):
            logprobs = arrays["logits.topk_values"]
            if ":q" not in mode:  # raw values (§5): log-probs are value - logsumexp
                logprobs = logprobs - arrays["logits.logsumexp"]
            order = np.argsort(-logprobs, axis=1, kind="stable")
            ids = np.take_along_axis(arrays["logits.topk_ids"], order, axis=1)
            assert np.array_equal(rows.ids.numpy(), ids)
            expected = np.take_along_axis(logprobs, order, axis=1)
            np.testing.assert_allclose(rows.logprobs.numpy(), expected, rtol=1e-5, atol=1e-5)
        else:
            counts = arrays["logits.sample_counts"]
            assert np.array_equal(rows.ids.numpy(), arrays["logits.sample_ids"])
            assert (counts.sum(axis=1) == int(mode.split(":")[1])).all()


def test_legacy_dense_topk_field(tmp_path: pathlib.Path) -> None:
    spec = _logits_spec(None, topk=5)  # ``topk`` with no logits_mode: ids as uint16 (§5.4)
    _write(tmp_path / "c", spec, _lm_examples(spec))
    plain = _compare_with_reader(tmp_path / "c")
    values = next(iter(plain.values()))["arrays"]["logits.topk_values"]
    assert (np.diff(values, axis=1) <= 0).all()  # sorted by descending value


def test_exact_logits_and_the_lm_head(tmp_path: pathlib.Path) -> None:
    spec = _logits_spec("exact")
    generator = torch.Generator().manual_seed(0)
    head = LMHead(torch.randn(VOCAB, 16, generator=generator), torch.randn(VOCAB))
    examples = _lm_examples(spec, width=16)  # the final hidden state, (rows, H)
    _write(tmp_path / "c", spec, examples, head=head)
    plain = _compare_with_reader(tmp_path / "c")
    tensors = plain_reader.read_lm_head(tmp_path / "c")
    assert np.array_equal(tensors["weight"], head.weight.double().numpy())
    assert np.array_equal(tensors["bias"], head.bias.double().numpy())
    hidden = plain["ex00000"]["arrays"]["logits.hidden"]  # (rows, H)
    logits = hidden @ tensors["weight"].T + tensors["bias"]  # §6: z = W h + b
    assert logits.shape == (4, VOCAB)


def test_a_corrupt_chunk_fails_the_documented_checksum(tmp_path: pathlib.Path) -> None:
    spec = parse_feature_spec("hidden:0", codec="none")
    _write(tmp_path / "c", spec, synthetic_examples(spec, 4))
    chunk = tmp_path / "c" / "shards" / "00000" / "hidden.0" / "c" / "0" / "0"  # §3: row chunk 0
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="crc32"):
        plain_reader.read_cache(tmp_path / "c")


def test_the_plain_reader_imports_no_cachebrew() -> None:
    tree = ast.parse(pathlib.Path(plain_reader.__file__).read_text(encoding="utf-8"))
    modules = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [m for m in modules if m.split(".")[0] == "cachebrew"], modules
    assert {m.split(".")[0] for m in modules} <= {"__future__", "json", "zlib", "pathlib",
                                                  "typing", "numpy", "pyarrow", "zarr"}  # fmt: skip
