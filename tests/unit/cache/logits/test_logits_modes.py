"""Logits-mode limits name the real limit and the fix, before the teacher runs (issue 24)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cachebrew.cache import parse_feature_spec
from cachebrew.cache.logits.modes import MAX_CODED_VOCAB, parse_logits_mode, vocab_problems
from cachebrew.errors import ConfigError


def test_a_sample_count_over_uint16_names_the_count_limit() -> None:
    with pytest.raises(ConfigError) as error:
        parse_logits_mode("sample:70000@0.05")
    message = str(error.value)
    assert "70,000 draws per row is more than 65,535" in message
    assert "sample:N with N <= 65535" in message
    assert "vocab_size" not in message and "uint16" in message
    assert parse_logits_mode("sample:65535").size == 65535


def test_topk_larger_than_the_vocabulary_is_refused_with_the_fix() -> None:
    problems = vocab_problems(parse_logits_mode("topk:128"), 100)
    assert problems == [
        "--logits topk:128: keeps 128 ids per row, but the teacher has 100 logits; use topk:K "
        "with K <= 100 (topk:100 or dense keeps every logit)"
    ]
    assert vocab_problems(parse_logits_mode("topk:100"), 100) == []
    assert vocab_problems(parse_logits_mode("sample:500"), 100) == []  # draws repeat ids


def test_a_value_code_on_a_vocabulary_beyond_its_ids_is_refused() -> None:
    (problem,) = vocab_problems(parse_logits_mode("topk:64:q4"), MAX_CODED_VOCAB + 1)
    assert "3-byte varints (ids below 2,097,152)" in problem
    assert problem.endswith("use topk:64 (lossless, any vocabulary)")
    assert vocab_problems(parse_logits_mode("topk:64:q4"), MAX_CODED_VOCAB) == []
    assert vocab_problems(parse_logits_mode("topk:64"), MAX_CODED_VOCAB * 4) == []


def test_the_stored_feature_refuses_a_mode_its_vocabulary_cannot_hold() -> None:
    logits = parse_feature_spec("logits").get("logits")
    assert logits is not None
    with pytest.raises(ConfigError, match="topk:64: keeps 64 ids per row, but the teacher has 50"):
        replace(logits, logits_mode="topk:64", vocab_size=50)
    assert replace(logits, logits_mode="topk:50", vocab_size=50).topk == 50


def test_precompute_refuses_it_while_resolving_the_spec(tmp_path) -> None:
    """resolve_feature_spec runs before the teacher's first batch (run_precompute calls it
    right after loading the teacher, with the teacher config's vocab_size)."""
    from cachebrew.teacher.precompute import PrecomputeConfig, resolve_feature_spec

    cfg = PrecomputeConfig(teacher="t", data="d.jsonl", out="o", logits="topk:300:q5")
    with pytest.raises(
        ConfigError, match="topk:300:q5: keeps 300 ids per row, but the teacher has 256"
    ):
        resolve_feature_spec(cfg, 256)
    big = PrecomputeConfig(teacher="t", data="d.jsonl", out="o", logits="topk:8:q4")
    with pytest.raises(ConfigError, match="use topk:8 \\(lossless"):
        resolve_feature_spec(big, 3_000_000)
    assert resolve_feature_spec(cfg, 300).get("logits") is not None
