"""Lossy top-k value codes and varint ids (``--logits topk:K:q4|q5|q8``, cache/logits/topk_codes.py)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from cachebrew.cache import CacheWriter, open_cache, parse_feature_spec
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.logits.sparse import parse_logits_mode
from cachebrew.cache.logits.topk_codes import (
    CODE_BITS,
    decode_values,
    decode_varint_ids,
    encode_values,
    encode_varint_ids,
)
from cachebrew.distill.sparse_kd import sparse_kd_loss, topk_tail_targets
from cachebrew.errors import CacheError, ConfigError

VOCAB = 3000
# The documented fidelity bounds (README / BENCHMARKS.md): KL(teacher || reconstructed) over the
# k + 1 buckets, mean over rows, at k = 128 on LM-shaped rows.
KL_BOUND = {"q4": 1e-2, "q5": 3e-3, "q8": 1e-4}


def _lm_rows(rows: int, vocab: int = VOCAB, seed: int = 0) -> np.ndarray:
    """LM-shaped logits: Zipf over ranks plus noise, some rows peaked (a confident token)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1)
    out = np.empty((rows, vocab), dtype=np.float32)
    for r in range(rows):
        row = -1.1 * np.log(ranks) + rng.normal(0, 1.5, vocab)
        if r % 3 == 0:
            row[rng.integers(vocab)] += 12.0  # a peaked row: top-1 mass near 1
        out[r] = row[rng.permutation(vocab)]
    return out


def _bucket_kl(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL over the k entries plus the tail bucket, per row."""

    def buckets(x: np.ndarray) -> np.ndarray:
        mass = np.logaddexp.reduce(x, axis=1, keepdims=True)
        return np.concatenate([x, np.log(-np.expm1(mass))], axis=1)

    p, q = buckets(logp), buckets(logq)
    return (np.exp(p) * (p - q)).sum(axis=1)


def _topk_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    logits = logits.astype(np.float64)
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    ids = np.sort(np.argpartition(-logp, k - 1, axis=1)[:, :k], axis=1)
    return ids, np.take_along_axis(logp, ids, axis=1)


def test_parse_value_codes() -> None:
    mode = parse_logits_mode("topk:128:q5")
    assert (mode.kind, mode.size, mode.code, str(mode)) == ("topk", 128, "q5", "topk:128:q5")
    assert parse_logits_mode("topk:16").code is None
    with pytest.raises(ConfigError, match="unknown top-k value code 'q3'.*q4"):
        parse_logits_mode("topk:128:q3")
    with pytest.raises(ConfigError, match="only topk:K takes a value code"):
        parse_logits_mode("sample:12:q4")


@pytest.mark.parametrize("code", sorted(CODE_BITS))
def test_value_code_keeps_the_tail_and_stays_under_its_kl_bound(code: str) -> None:
    ids, logp = _topk_logprobs(_lm_rows(60), 128)
    stored = encode_values(logp, code)
    assert stored.shape == (60, 3 + 128) and stored.dtype == np.uint8
    assert stored[:, 3:].max() <= (1 << CODE_BITS[code]) - 1
    logq = decode_values(torch.from_numpy(stored), code).double().numpy()
    mass, mass_hat = (np.logaddexp.reduce(x, axis=1) for x in (logp, logq))
    tail, tail_hat = -np.expm1(mass), -np.expm1(mass_hat)
    np.testing.assert_allclose(tail_hat, tail, rtol=1e-3)  # fp16 d: relative 2**-11
    kl = _bucket_kl(logp, logq)
    assert kl.mean() < KL_BOUND[code]
    # the order of entries survives up to ties of equal codes: the top entry stays on top
    assert (logq.argmax(1) == logp.argmax(1)).mean() > 0.9


def test_finer_codes_are_closer() -> None:
    _, logp = _topk_logprobs(_lm_rows(30, seed=1), 64)
    kls = [
        _bucket_kl(logp, decode_values(torch.from_numpy(encode_values(logp, c)), c).numpy()).mean()
        for c in ("q4", "q5", "q8")
    ]
    assert kls[0] > kls[1] > kls[2] > 0


def test_varint_ids_round_trip_is_bit_exact() -> None:
    rng = np.random.default_rng(0)
    ids = np.sort(np.stack([rng.choice(151_936, 128, replace=False) for _ in range(50)]), axis=1)
    ids[0, 0] = 0  # a zero delta first, then the padding must still parse
    ids[1] = np.arange(151_936 - 128, 151_936)  # one 3-byte delta, then 1-byte ones
    stored = encode_varint_ids(ids)
    assert stored.shape == (50, 3 * 128)
    np.testing.assert_array_equal(decode_varint_ids(stored), ids)
    with pytest.raises(CacheError, match="ascending"):
        encode_varint_ids(np.array([[5, 3]]))
    with pytest.raises(CacheError, match="2\\*\\*21"):
        encode_varint_ids(np.array([[1 << 21]]))


def _spec(mode: str):
    from dataclasses import replace

    from cachebrew.cache.format.spec import FeatureSpec

    logits = replace(
        parse_feature_spec("logits", dtype="fp16").get("logits"),
        logits_mode=mode,
        vocab_size=VOCAB,
    )
    return FeatureSpec((logits,))


@pytest.mark.parametrize("reduction", ["raw", "logprobs"])
def test_coded_cache_round_trip_feeds_the_sparse_losses(
    tmp_path: pathlib.Path, reduction: str
) -> None:
    from dataclasses import replace

    spec = _spec("topk:32:q8")
    spec = type(spec)((replace(spec.get("logits"), reduction=reduction),))
    rng = np.random.default_rng(3)
    examples = [_lm_rows(int(rng.integers(3, 9)), seed=i) for i in range(5)]
    with CacheWriter(
        tmp_path / "c", spec, teacher_info={"class": "T"}, corpus_fingerprint="c"
    ) as w:
        for i, logits in enumerate(examples):
            w.add(f"ex{i}", {"logits": logits}, input_ids=np.arange(len(logits)))
    reader = open_cache(tmp_path / "c")
    feature = reader.spec.get("logits")
    assert feature.logits_mode == "topk:32:q8"  # self-describing in the manifest
    assert feature.array_dtype("logits.topk_values") == "topk_q8"
    assert feature.array_dtype("logits.topk_ids") == "ids_varint"
    batch = next(iter(CacheDataset(reader, batch_size=64, shuffle=False)))
    teacher = batch["teacher_cache"]["logits"]
    logits = np.concatenate(examples)
    ids, logp = _topk_logprobs(logits, 32)
    assert teacher.kind == "topk" and teacher.ids.shape == (len(logits), 32)
    assert torch.all(teacher.logprobs[:, :-1] >= teacher.logprobs[:, 1:])  # descending
    # ids exact; each id's log-prob within q8's step (the loader sorts entries by value)
    order = teacher.ids.argsort(dim=1)
    np.testing.assert_array_equal(teacher.ids.gather(1, order).numpy(), ids)
    got = teacher.logprobs.gather(1, order).double().numpy()
    np.testing.assert_allclose(got, logp, atol=0.1)
    # the tail bucket is the teacher's tail (exact mass kept)
    targets = topk_tail_targets(teacher, 1.0).double().numpy()
    np.testing.assert_allclose(
        targets[:, -1], -np.expm1(np.logaddexp.reduce(logp, axis=1)), rtol=1e-3
    )
    student = torch.randn(len(logits), VOCAB, requires_grad=True)
    loss = sparse_kd_loss(student, teacher, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and student.grad is not None


def test_compare_reads_a_coded_cache_as_log_probs(tmp_path: pathlib.Path) -> None:
    from cachebrew.cache.tools.compare_logits import logprobs

    logits = _lm_rows(4, seed=5)
    with CacheWriter(
        tmp_path / "c", _spec("topk:16:q8"), teacher_info={"class": "T"}, corpus_fingerprint="c"
    ) as w:
        w.add("ex0", {"logits": logits}, input_ids=np.arange(4))
    reader = open_cache(tmp_path / "c")
    features = reader.get("ex0")["features"]
    rebuilt = logprobs(features, reader.spec.get("logits"), VOCAB)  # (rows, V)
    ids, logp = _topk_logprobs(logits, 16)
    np.testing.assert_allclose(np.take_along_axis(rebuilt, ids, axis=1), logp, atol=0.1)
    # the rest of the row holds the teacher's tail mass, spread evenly
    tail = -np.expm1(np.logaddexp.reduce(logp, axis=1))
    np.testing.assert_allclose(np.exp(rebuilt).sum(axis=1), 1.0, rtol=1e-6)
    rest = np.exp(rebuilt).sum(axis=1) - np.exp(np.take_along_axis(rebuilt, ids, 1)).sum(1)
    np.testing.assert_allclose(rest, tail, rtol=1e-3)
