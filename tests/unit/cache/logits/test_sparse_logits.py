"""Sparse logit storage (``--logits topk:K | sample:N``): parsing, id packing, round trips."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from cachebrew.cache import CacheWriter, open_cache, parse_feature_spec
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.logits.sparse import (
    SparseLogits,
    decode_delta_ids,
    encode_delta_ids,
    from_byte_planes,
    id_bits,
    pack_ids,
    parse_logits_mode,
    sample_rows,
    to_byte_planes,
    unpack_ids,
)
from cachebrew.distill.sparse_kd import sparse_kd_loss
from cachebrew.errors import CacheError, ConfigError

VOCAB = 300


def _spec(mode: str, vocab_size: int = VOCAB, layout: int | None = None):
    spec = parse_feature_spec("logits", dtype="fp16")
    from dataclasses import replace

    from cachebrew.cache.format.spec import FeatureSpec

    logits = replace(
        spec.get("logits"), logits_mode=mode, vocab_size=vocab_size, topk_layout=layout
    )
    return FeatureSpec((logits,))


def _examples(num: int = 6, width: int = VOCAB, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        length = int(rng.integers(3, 9))
        logits = (rng.standard_normal((length, width)) * 3).astype(np.float32)
        out.append({"id": f"ex{i}", "logits": logits, "input_ids": np.arange(length)})
    return out


def _write(path: pathlib.Path, spec, examples) -> pathlib.Path:
    with CacheWriter(path, spec, teacher_info={"class": "Tiny"}, corpus_fingerprint="c") as w:
        for e in examples:
            w.add(e["id"], {"logits": e["logits"]}, input_ids=e["input_ids"])
    return path


def test_parse_logits_mode() -> None:
    assert str(parse_logits_mode("topk:128")) == "topk:128"
    assert parse_logits_mode("sample:12@2").temperature == 2.0
    assert parse_logits_mode("dense").kind == "dense"
    for bad in ("topk", "topk:0", "sample:x", "top:3", "topk:4@2", "sample:4@-1"):
        with pytest.raises(ConfigError, match="logits mode"):
            parse_logits_mode(bad)


def test_a_bad_logits_mode_is_refused_when_the_precompute_config_loads() -> None:
    from cachebrew.teacher.precompute import PrecomputeConfig

    with pytest.raises(ConfigError, match=r"logits: logits mode 'topk:0'"):
        PrecomputeConfig(teacher="t", data="d.jsonl", out="o", logits="topk:0")
    assert PrecomputeConfig(teacher="t", data="d.jsonl", out="o", logits="sample:12@2").logits


@pytest.mark.parametrize("vocab", [200, 151_936, 262_144])
def test_pack_round_trip_at_the_vocabulary_width(vocab: int) -> None:
    bits = id_bits(vocab)
    assert bits == max(8, int(np.ceil(np.log2(vocab))))
    ids = np.random.default_rng(1).integers(0, vocab, size=(7, 33))
    ids[0, 0] = vocab - 1
    packed = pack_ids(ids, bits)
    assert packed.dtype == np.uint8 and packed.shape == (7, -(-33 * bits // 8))
    np.testing.assert_array_equal(unpack_ids(packed, bits), ids)


def test_id_wider_than_the_vocabulary_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CacheError, match=r"logit id 256 does not fit the 8-bit ids"):
        pack_ids(np.array([[3, 256]]), 8)
    examples = _examples(1)
    examples[0]["logits"][:, 299] = 100.0  # the top id is 299, beyond vocab_size=200's 8 bits
    with pytest.raises(CacheError, match="logit id 299 does not fit the vocabulary of this cache"):
        _write(tmp_path / "c", _spec("topk:4", vocab_size=200), examples)
    with pytest.raises(CacheError, match="does not fit the 8-bit ids"):
        _write(tmp_path / "d", _spec("topk:4", vocab_size=200, layout=1), examples)
    with pytest.raises(ConfigError, match="needs the vocabulary size"):
        _spec("topk:4", vocab_size=None)  # type: ignore[arg-type]


def _batch(path: pathlib.Path) -> dict:
    reader = open_cache(path)
    return next(iter(CacheDataset(reader, batch_size=64, shuffle=False)))


def test_topk_round_trip_is_sparse_and_exact(tmp_path: pathlib.Path) -> None:
    examples = _examples()
    reader = open_cache(_write(tmp_path / "c", _spec("topk:8"), examples))
    feature = reader.spec.get("logits")
    assert feature.logits_mode == "topk:8" and feature.topk == 8
    assert feature.topk_layout == 2
    assert reader.manifest["arrays"]["logits.topk_ids"]["dtype"] == "ids_delta"
    assert reader.manifest["arrays"]["logits.topk_values"]["dtype"] == "fp16_planes"
    teacher = _batch(tmp_path / "c")["teacher_cache"]["logits"]
    assert isinstance(teacher, SparseLogits) and teacher.shape == (
        sum(len(e["input_ids"]) for e in examples),
        VOCAB,
    )
    dense = torch.from_numpy(np.concatenate([e["logits"] for e in examples])).log_softmax(-1)
    top = dense.topk(8, dim=-1)
    assert torch.all(teacher.logprobs[:, :-1] >= teacher.logprobs[:, 1:])  # descending
    # the same (id, value) pairs; the order of entries tied in fp16 may differ
    got, want = _by_id(teacher.ids, teacher.logprobs), _by_id(top.indices, top.values)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    # fp16 raw values minus the fp32 log-sum-exp: the values' fp16 rounding only
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=8e-3)


def _by_id(ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = ids.argsort(dim=1)
    return ids.gather(1, order), values.gather(1, order)


def test_sample_round_trip_counts_and_determinism(tmp_path: pathlib.Path) -> None:
    examples = _examples()
    _write(tmp_path / "a", _spec("sample:12"), examples)
    _write(tmp_path / "b", _spec("sample:12"), examples)
    a, b = (_batch(tmp_path / n)["teacher_cache"]["logits"] for n in ("a", "b"))
    assert isinstance(a, SparseLogits) and a.kind == "sample" and a.temperature == 1.0
    torch.testing.assert_close(a.ids, b.ids, rtol=0, atol=0)  # seeded by the row's content
    shares = a.logprobs.exp()
    torch.testing.assert_close(shares.sum(-1), torch.ones(len(shares)))
    assert torch.all((shares * 12 - (shares * 12).round()).abs() < 1e-5)  # counts / 12
    # the stored ids are exactly what sample_rows draws
    logits = np.concatenate([e["logits"] for e in examples])
    ids, counts = sample_rows(logits, 12, 1.0)
    np.testing.assert_array_equal(a.ids.numpy(), ids)
    np.testing.assert_allclose(shares.numpy(), counts / 12, atol=1e-6)


def test_dense_mode_and_topk_alias_round_trip(tmp_path: pathlib.Path) -> None:
    examples = _examples(3)
    teacher = _batch(_write(tmp_path / "d", _spec("dense"), examples))["teacher_cache"]["logits"]
    assert isinstance(teacher, torch.Tensor) and teacher.shape[1] == VOCAB
    expected = np.concatenate([e["logits"] for e in examples])
    np.testing.assert_allclose(teacher.numpy(), expected, rtol=2**-10, atol=1e-3)


def test_sample_counts_follow_the_teacher_distribution() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    shares = np.zeros(4)
    for seed in range(2000):  # rows differ by a tiny bit so the content seed differs
        ids, counts = sample_rows(logits + np.float32(seed * 1e-6), 12, 1.0)
        np.add.at(shares, ids[0], counts[0] / 12)
    shares /= 2000
    # std of each mean share <= sqrt(0.25 / (12 * 2000)) = 3.2e-3; 4 sigma
    np.testing.assert_allclose(shares, [0.5, 0.3, 0.15, 0.05], atol=0.013)


def test_delta_ids_round_trip_is_bit_exact() -> None:
    rng = np.random.default_rng(0)
    ids = np.sort(np.stack([rng.choice(262_144, 128, replace=False) for _ in range(5)]), axis=1)
    ids[0, 0] = 0  # a first delta of 0
    stored = encode_delta_ids(ids)
    assert stored.dtype == np.uint8 and stored.shape == (5, 4 * 128)
    assert not stored[:, 3 * 128 :].any()  # the top byte plane is all zeros for the codec
    np.testing.assert_array_equal(decode_delta_ids(stored), ids)
    values = rng.standard_normal((5, 128)).astype(np.float16)
    np.testing.assert_array_equal(from_byte_planes(to_byte_planes(values), values.dtype), values)
    with pytest.raises(CacheError, match="must be ascending"):
        encode_delta_ids(np.array([[5, 3]]))


def test_old_layout_cache_reads_and_gives_the_same_rows(tmp_path: pathlib.Path) -> None:
    """A layout-1 manifest (no topk_layout: written before layout 2) still reads, and the
    losses receive the same rows from both layouts: values descending, ids alongside."""
    import json

    examples = _examples()
    old = _write(tmp_path / "old", _spec("topk:8", layout=1), examples)
    manifest_path = old / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for feature in manifest["spec"]["features"]:
        assert feature.pop("topk_layout") == 1
    manifest_path.write_text(json.dumps(manifest))
    reader = open_cache(old)
    assert reader.spec.get("logits").topk_layout == 1
    assert reader.manifest["arrays"]["logits.topk_ids"]["dtype"] == "ids9"
    new = _write(tmp_path / "new", _spec("topk:8"), examples)
    a, b = (_batch(path)["teacher_cache"]["logits"] for path in (old, new))
    assert torch.all(b.logprobs[:, :-1] >= b.logprobs[:, 1:])
    # the same (id, value) pairs, values bit-identical; only fp16 ties may swap places
    for x, y in zip(_by_id(a.ids, a.logprobs), _by_id(b.ids, b.logprobs), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=0)
    student = torch.randn(a.shape[0], VOCAB, generator=torch.Generator().manual_seed(0))
    for target in ("tail", "renorm"):
        losses = [sparse_kd_loss(student, t, 2.0, topk_target=target) for t in (a, b)]
        assert float(losses[0]) == pytest.approx(float(losses[1]), abs=1e-6)


def test_unknown_topk_layout_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown topk_layout 3; choose one of"):
        _spec("topk:8", layout=3)
