"""FeatureSpec: the CLI form, derivation from a distill config, validation, JSON round trip."""

from __future__ import annotations

import pytest

from cachebrew.cache.format.spec import (
    FeatureSpec,
    StoredFeature,
    feature_spec_from_matches,
    layer_names,
    parse_feature_spec,
)
from cachebrew.errors import ConfigError


def test_parse_cli_form() -> None:
    spec = parse_feature_spec("logits,hidden:0,4,8,12,attention:4,8,12", dtype="fp16")
    assert [f.kind for f in spec] == ["logits", "hidden", "attention"]
    assert spec.get("hidden").layers == (0, 4, 8, 12)
    assert spec.get("attention").layers == (4, 8, 12)
    assert spec.get("logits").reduction == "raw"
    assert spec.input_names == (
        "logits",
        *(f"hidden.{i}" for i in (0, 4, 8, 12)),
        *(f"attention.{i}" for i in (4, 8, 12)),
    )
    assert all(f.dtype == "fp16" and f.codec == "lz4-bitshuffle" for f in spec)


def test_parse_options_and_topk_arrays() -> None:
    spec = parse_feature_spec(
        "logits:logprobs,hidden_cls:12", dtype="bf16", topk=8, vocab_size=30522
    )
    logits = spec.get("logits")
    assert (logits.reduction, logits.topk, logits.dtype) == ("logprobs", 8, "bf16")
    assert logits.data_arrays == ("logits.topk_values", "logits.topk_ids", "logits.logsumexp")
    assert logits.array_dtype("logits.topk_ids") == "uint16"
    assert logits.array_dtype("logits.logsumexp") == "fp32"
    assert spec.to_cli() == "logits:logprobs,hidden_cls:12"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("logits,hiden:0", r"unknown feature 'hiden:0'; choose one of \['logits', 'hidden'"),
        ("hidden:x", r"bad layer 'x' for hidden; layers are non-negative integers"),
        ("hidden", r"'hidden' needs layers, e.g. 'hidden:0,4,8'"),
        ("logits:softmax", r"logits takes ':raw' or ':logprobs'"),
    ],
)
def test_parse_errors_name_the_choices(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_feature_spec(text)


def test_parse_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_feature_spec("hiden:0,attention:y")
    assert len(info.value.problems) == 2


def test_bad_dtype_codec_and_int8_attention() -> None:
    with pytest.raises(ConfigError, match=r"unknown dtype 'fp8'; choose one of \['fp32', 'fp16'"):
        parse_feature_spec("hidden:0", dtype="fp8")
    with pytest.raises(ConfigError, match=r"unknown codec 'gzip'; choose one of"):
        StoredFeature("hidden", (0,), codec="gzip")
    with pytest.raises(ConfigError, match="int8 is not supported for attention"):
        StoredFeature("attention", (1,), dtype="int8")
    with pytest.raises(ConfigError, match="given twice"):
        FeatureSpec((StoredFeature("hidden", (0,)), StoredFeature("hidden", (1,))))


def test_dict_round_trip() -> None:
    spec = parse_feature_spec("logits:logprobs,hidden:0,2,hidden_cls:1", dtype="int8", topk=4)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec


def _tinybert_matches() -> list[dict]:
    # TextBrewer's TinyBERT-style map (L4 student, 12-layer teacher).
    hidden = [
        {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
        for s, t in enumerate([0, 3, 6, 9, 12])
    ]
    attention = [
        {"layer_T": t, "layer_S": s, "feature": "attention", "loss": "attention_mse", "weight": 1}
        for s, t in enumerate([2, 5, 8, 11])
    ]
    return hidden + attention


def test_from_matches_tinybert() -> None:
    spec = feature_spec_from_matches("ce", "none", _tinybert_matches())
    assert spec.to_cli() == "logits:logprobs,hidden:0,3,6,9,12,attention:2,5,8,11"
    assert spec.get("hidden").dtype == "fp16"


def test_from_matches_reductions_and_logit_choices() -> None:
    matches = [
        {"feature": "hidden", "loss": "pkd", "layer_T": 12},
        {"feature": "attention", "loss": "attention_mse_sum", "layer_T": 3},
        {"feature": "attention", "loss": "attention_ce_mean", "layer_T": [4]},
        {"feature": "hidden", "loss": "nst", "layer_T": [2, 3]},
        {"feature": "attention", "loss": "my_registered_loss", "layer_T": 7},
    ]
    spec = feature_spec_from_matches("mse", None, matches)
    assert spec.to_cli() == (
        "logits:raw,hidden:2,3,hidden_cls:12,attention:7,attention_sum:3,attention_mean:4"
    )
    assert feature_spec_from_matches("ce", "flsw", []).get("logits").reduction == "raw"
    assert feature_spec_from_matches("kl", "cwsm", []).get("logits").reduction == "logprobs"
    assert feature_spec_from_matches(None, None, matches[:1]).get("logits") is None


def test_from_matches_errors() -> None:
    bad = [
        {"feature": "logits", "loss": "hidden_mse", "layer_T": 1},
        {"feature": "hidden", "loss": "hidden_mse", "layer_T": [1, 2, 3]},
    ]
    with pytest.raises(ConfigError) as info:
        feature_spec_from_matches("ce", None, bad)
    assert "intermediate_matches[0]: unknown feature 'logits'" in info.value.problems[0]
    assert "intermediate_matches[1]: layer_T must be" in info.value.problems[1]
    with pytest.raises(ConfigError, match="nothing to store"):
        feature_spec_from_matches(None, None, [])


def test_layer_names() -> None:
    assert layer_names(["hidden:4,8", "logits", "attention.2"]) == [
        "hidden.4",
        "hidden.8",
        "logits",
        "attention.2",
    ]
