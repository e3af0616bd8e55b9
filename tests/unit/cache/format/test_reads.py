"""What a distillation reads and what a cache stores (cache/format/reads.py), and precompute's
``from_runs`` that the command layer resolves."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cachebrew.cache.format.reads import features_read, features_to_store, merge_specs
from cachebrew.cache.format.spec import parse_feature_spec
from cachebrew.config import DistillationConfig
from cachebrew.errors import ConfigError
from cachebrew.teacher.precompute import PrecomputeConfig, resolve_feature_spec


def _distill(loss: str, layer: int, kd: str = "ce") -> DistillationConfig:
    match = {"layer_T": layer, "layer_S": 0, "feature": "hidden", "loss": loss, "weight": 1}
    return DistillationConfig(kd_loss_type=kd, intermediate_matches=[match])


def test_merge_keeps_each_kind_once_with_every_layer_and_raw_over_logprobs() -> None:
    merged = merge_specs(
        [parse_feature_spec("logits:logprobs,hidden:1"), parse_feature_spec("logits,hidden:3")]
    )
    assert merged.to_cli() == "logits:raw,hidden:1,3"


def test_runs_are_merged_and_problems_name_their_run() -> None:
    spec = features_read({"a": _distill("hidden_mse", 1), "b": _distill("hidden_mse", 2, "mse")})
    assert spec is not None and spec.to_cli() == "logits:raw,hidden:1,2"
    assert features_read({}) is None  # every run on hard labels
    # a config validated elsewhere: only the feature derivation finds the bad feature name
    match = SimpleNamespace(to_dict=lambda: {"feature": "nope", "loss": "x", "layer_T": 1})
    bad = SimpleNamespace(
        kd_loss_type=None, temperature_scheduler="none", intermediate_matches=[match]
    )
    with pytest.raises(ConfigError, match="run bad: "):
        features_read({"run bad": bad})  # type: ignore[dict-item]


def test_features_to_store_unions_sources_then_sets_mode_and_dtypes() -> None:
    spec = features_to_store(
        features="attention:0",
        distill=_distill("hidden_mse", 1),
        runs={"r": _distill("hidden_mse", 2)},
        logits_mode="topk:4",
        vocab_size=100,
        feature_dtypes={"hidden": "int8"},
    )
    assert spec.to_cli() == "logits:logprobs,hidden:1,2,attention:0"
    assert spec.get("logits").logits_mode == "topk:4"
    assert {f.kind: f.dtype for f in spec} == {
        "hidden": "int8",
        "logits": "fp16",
        "attention": "fp16",
    }
    assert features_to_store().to_cli() == "logits:raw"
    with pytest.raises(ConfigError, match="feature_dtypes names"):
        features_to_store(feature_dtypes={"hidden": "int8"})


def test_from_runs_needs_the_runs_the_command_layer_loads() -> None:
    cfg = PrecomputeConfig(teacher="t", data="d", out="o", from_runs="sweep.yaml")
    with pytest.raises(ConfigError, match="distill_configs_of"):
        resolve_feature_spec(cfg, vocab_size=None)
    spec = resolve_feature_spec(cfg, vocab_size=None, runs={"r": _distill("hidden_mse", 2)})
    assert spec.to_cli() == "logits:logprobs,hidden:2"
