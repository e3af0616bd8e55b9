"""Top-k / sample rows taken on the teacher's side in row chunks equal the writer's dense path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cachebrew.cache import parse_feature_spec
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.logits.sparse import parse_logits_mode
from cachebrew.cache.write.prepare import prepare_example
from cachebrew.teacher import sparse_rows
from cachebrew.teacher.sparse_rows import chunk_rows_for, reduce_rows

VOCAB = 1000
ROWS = 70


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """32 rows per chunk: 70 rows take three chunks, the last one short."""
    monkeypatch.setattr(sparse_rows, "CHUNK_ELEMENTS", 32 * VOCAB)
    assert chunk_rows_for(VOCAB) == 32


def _logits(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(ROWS, VOCAB, generator=generator) * 3  # (rows, V), no ties


@pytest.mark.parametrize("layout", [1, 2])
@pytest.mark.parametrize("reduction", ["raw", "logprobs"])
def test_topk_in_chunks_equals_the_dense_path(small_chunks, layout: int, reduction: str) -> None:
    spec = parse_feature_spec("logits", dtype="fp32", codec="none")
    feature = replace(
        spec.get("logits"), logits_mode="topk:16", vocab_size=VOCAB, topk_layout=layout,
        reduction=reduction,
    )  # fmt: skip
    spec = FeatureSpec((feature,))
    logits = _logits()
    dense = prepare_example(spec, {"logits": logits.numpy()}, ROWS)
    reduced = reduce_rows(logits, parse_logits_mode("topk:16"))
    chunked = prepare_example(spec, {"logits": {k: v.numpy() for k, v in reduced.items()}}, ROWS)
    assert np.array_equal(dense["logits.topk_ids"], chunked["logits.topk_ids"])
    # fp32 log-sum-exp in torch against numpy's float64 sum cast to fp32: a few ulps
    for name in ("logits.topk_values", "logits.logsumexp"):
        np.testing.assert_allclose(chunked[name], dense[name], rtol=0, atol=1e-5)


def test_topk_value_codes_and_sample_equal_the_dense_path(small_chunks) -> None:
    logits = _logits(1)
    base = parse_feature_spec("logits", dtype="fp32", codec="none").get("logits")
    for mode in ("topk:16:q8", "sample:12"):
        spec = FeatureSpec((replace(base, logits_mode=mode, vocab_size=VOCAB),))
        dense = prepare_example(spec, {"logits": logits.numpy()}, ROWS)
        reduced = reduce_rows(logits, parse_logits_mode(mode))
        rows = {k: v.numpy() for k, v in reduced.items()}
        chunked = prepare_example(spec, {"logits": rows}, ROWS)
        assert sorted(dense) == sorted(chunked)
        for name in dense:  # ids, counts and codes: equal; the log-sum-exp: a few fp32 ulps
            if dense[name].dtype.kind == "f":
                np.testing.assert_allclose(chunked[name], dense[name], rtol=0, atol=1e-5)
            else:
                assert np.array_equal(dense[name], chunked[name]), (mode, name)


def test_no_row_holds_more_than_a_chunk(small_chunks, monkeypatch: pytest.MonkeyPatch) -> None:
    """The largest temporary is one (chunk_rows, V) block: topk sees no bigger input."""
    seen: list[int] = []
    original = torch.Tensor.topk

    def spy(self: torch.Tensor, *args, **kwargs):
        seen.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", spy)
    reduce_rows(_logits(), parse_logits_mode("topk:4"))
    assert seen == [32, 32, 6]
