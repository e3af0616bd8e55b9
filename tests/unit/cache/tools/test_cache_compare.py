"""`cachebrew compare`: join on ids, per-array max abs diff, logits KL across representations."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from synthetic_cache import synthetic_examples, write_examples
from typer.testing import CliRunner

from cachebrew.cache import CacheWriter, parse_feature_spec
from cachebrew.cache.feed.collate import rebuild_topk
from cachebrew.cache.logits.rows import kl_rows
from cachebrew.cache.tools.compare import compare_caches, max_abs_diff
from cachebrew.cache.tools.compare_logits import logprobs
from cachebrew.cli import app
from cachebrew.errors import CacheError, ConfigError

SPEC_TEXT = "logits,hidden:0,2,attention_sum:2"
EXAMPLES = synthetic_examples(parse_feature_spec(SPEC_TEXT), 14, seed=3, num_classes=6)
runner = CliRunner()


def _write(
    path: pathlib.Path,
    examples: list[dict[str, Any]] = EXAMPLES,
    spec: str = SPEC_TEXT,
    **kwargs: Any,
) -> pathlib.Path:
    dtype = kwargs.pop("dtype", "fp32")
    topk = kwargs.pop("topk", None)
    shard_size = kwargs.pop("shard_size", 4)
    feature_spec = parse_feature_spec(spec, dtype=dtype, topk=topk, vocab_size=6 if topk else None)
    with CacheWriter(
        path,
        feature_spec,
        teacher_info={"class": "Tiny"},
        corpus_fingerprint="c",
        shard_size=shard_size,
        chunk_bytes=4096,
    ) as writer:
        names = set(feature_spec.input_names)
        kept = [
            {**e, "features": {k: v for k, v in e["features"].items() if k in names}}
            for e in examples
        ]
        write_examples(writer, kept)
    return path


def test_same_examples_in_other_shards_are_identical(tmp_path: pathlib.Path) -> None:
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b", shard_size=5)
    report = compare_caches(a, b)
    assert report["identical"] and report["ok"] and report["first_difference"] is None
    assert report["common_examples"] == 14
    assert set(report["features"]) == {
        "input_ids",
        "label",
        "logits",
        "hidden.0",
        "hidden.2",
        "attention_sum.2",
    }
    assert report["logits_kl"]["max"] == 0.0 and report["logits_kl"]["rows"] == 14
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("identical")


def test_one_changed_value_is_named_and_atol_accepts_it(tmp_path: pathlib.Path) -> None:
    changed = copy.deepcopy(EXAMPLES)
    changed[9]["features"]["hidden.2"][1, 3] += 0.25
    a, b = _write(tmp_path / "a"), _write(tmp_path / "b", changed)
    result = runner.invoke(app, ["compare", str(a), str(b), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["first_difference"] == {"example_id": "ex00009", "feature": "hidden.2"}
    assert report["features"]["hidden.2"]["examples_differing"] == 1
    assert report["features"]["hidden.2"]["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    assert report["features"]["hidden.0"]["max_abs_diff"] == 0.0
    text = runner.invoke(app, ["compare", str(a), str(b)]).output
    assert "first at example 'ex00009', feature 'hidden.2'" in text
    within = runner.invoke(app, ["compare", str(a), str(b), "--atol", "0.3"])
    assert within.exit_code == 0 and "equal within atol 0.3" in within.output


def test_ids_only_in_one_cache_are_reported(tmp_path: pathlib.Path) -> None:
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b", EXAMPLES[2:12])
    report = compare_caches(a, b)
    assert not report["ok"] and report["first_difference"] is None
    assert report["only_in_a"] == {
        "count": 4,
        "examples": ["ex00000", "ex00001", "ex00012", "ex00013"],
    }
    assert report["only_in_b"]["count"] == 0 and report["common_examples"] == 10
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 1 and "4 examples only in A" in result.output


def test_raw_logits_against_logprobs_compare_as_distributions(tmp_path: pathlib.Path) -> None:
    a = _write(tmp_path / "a", spec="logits,hidden:0")
    b = _write(tmp_path / "b", spec="logits:logprobs,hidden:0")
    report = compare_caches(a, b, atol=1e-5)
    assert report["ok"] and not report["identical"], report
    assert report["features"]["logits"]["max_abs_diff"] < 1e-5
    assert report["logits_kl"]["max"] < 1e-6  # fp32 log_softmax rounding
    assert report["features_only_in_a"] == [] and report["features_only_in_b"] == []


def test_fp16_against_fp32_has_small_differences(tmp_path: pathlib.Path) -> None:
    a, b = _write(tmp_path / "a"), _write(tmp_path / "b", dtype="fp16")
    strict, loose = compare_caches(a, b), compare_caches(a, b, atol=1e-2)
    assert not strict["ok"] and strict["first_difference"]["example_id"] == "ex00000"
    assert loose["ok"] and 0 < loose["logits_kl"]["max"] < 1e-5


def test_topk_against_dense(tmp_path: pathlib.Path) -> None:
    dense = _write(tmp_path / "dense", spec="logits")
    full = compare_caches(dense, _write(tmp_path / "k6", spec="logits", topk=6), atol=1e-5)
    assert full["ok"] and full["logits_kl"]["max"] < 1e-6  # k = V: nothing is lost
    partial = compare_caches(dense, _write(tmp_path / "k2", spec="logits", topk=2))
    assert not partial["ok"] and partial["first_difference"]["feature"] == "logits"
    assert partial["logits_kl"]["mean"] > 1e-4


def test_logprobs_of_topk_match_the_distill_loader() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(scale=3, size=(4, 9))
    order = np.argsort(-raw, axis=1)[:, :3]
    values = np.take_along_axis(raw, order, axis=1)
    lse = np.log(np.exp(raw).sum(1, keepdims=True))
    feature = parse_feature_spec("logits", topk=3).get("logits")
    assert feature is not None
    ours = logprobs(
        {"logits.topk_values": values, "logits.topk_ids": order, "logits.logsumexp": lse},
        feature,
        9,
    )
    theirs = rebuild_topk(
        torch.tensor(values), torch.tensor(order), torch.tensor(lse), 9, "raw"
    ).double()
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-6)


def test_kl_rows_matches_torch() -> None:
    rng = np.random.default_rng(1)
    p = torch.log_softmax(torch.tensor(rng.normal(size=(5, 7))), dim=1)
    q = torch.log_softmax(torch.tensor(rng.normal(size=(5, 7))), dim=1)
    expected = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(1)
    np.testing.assert_allclose(kl_rows(p.numpy(), q.numpy()), expected.numpy(), rtol=1e-10)


def test_max_abs_diff_edge_cases() -> None:
    assert max_abs_diff(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert max_abs_diff(np.array([np.nan]), np.array([0.0])) == float("inf")
    assert max_abs_diff(np.array([np.inf]), np.array([np.inf])) == 0.0
    assert max_abs_diff(np.zeros((2, 3)), np.zeros((3, 2))) is None
    assert max_abs_diff(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0


def test_a_missing_cache_exits_1_with_one_line(tmp_path: pathlib.Path) -> None:
    a = _write(tmp_path / "a")
    with pytest.raises(CacheError, match="does not exist"):
        compare_caches(a, tmp_path / "nope")
    result = runner.invoke(app, ["compare", str(a), str(tmp_path / "nope")])
    assert result.exit_code == 1 and "error:" in result.output


def test_a_negative_atol_exits_1_with_one_line(tmp_path: pathlib.Path) -> None:
    a = _write(tmp_path / "a")
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="--atol must be a number >= 0"):
            compare_caches(a, a, atol=bad)
    result = runner.invoke(app, ["compare", str(a), str(a), "--atol", "-1"])
    assert result.exit_code == 1 and "--atol must be a number >= 0, got -1.0" in result.output
