"""`cachebrew precompute`, `inspect` and `verify` end to end through the CLI on a tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cachebrew.cache import open_cache
from cachebrew.cli import app
from cachebrew.errors import CacheMismatchError, ConfigError
from cachebrew.models import load_model
from cachebrew.precompute import PrecomputeConfig, run_precompute

runner = CliRunner()


def _precompute(teacher: Path, data: Path, out: Path, *extra: str) -> str:
    args = ["precompute", "--teacher", str(teacher), "--data", str(data), "--out", str(out)]
    result = runner.invoke(app, [*args, "--label-field", "label", "--quiet", *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_precompute_inspect_verify(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    spec = "logits,hidden:0,2,hidden_cls:2,attention:1,attention_sum:1"
    text = _precompute(
        tiny_teacher_dir,
        tiny_corpus_jsonl,
        out,
        "--features",
        spec,
        "--dtype",
        "fp32",
        "--shard-size",
        "16",
        "--batch-size",
        "5",
    )
    assert "40 examples" in text

    info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
    assert info["num_examples"] == 40 and info["num_shards"] == 3
    assert {f["name"] for f in info["features"]} == {
        "logits",
        "hidden",
        "hidden_cls",
        "attention",
        "attention_sum",
    }
    assert info["bytes_on_disk"] > 0 and info["teacher"]["class"] == "BertForSequenceClassification"

    report = runner.invoke(
        app, ["verify", str(out), "--teacher", str(tiny_teacher_dir), "--sample", "4", "--json"]
    )
    assert report.exit_code == 0, report.output
    values = json.loads(report.stdout)["values"]
    assert set(values) >= {"logits", "hidden.0", "hidden.2", "attention.1", "attention_sum.1"}
    for name, stats in values.items():  # fp32 cache, same teacher: equal up to batching noise
        assert stats["max_abs_error"] < 1e-4, (name, stats)


def test_cached_values_equal_a_direct_teacher_pass(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    _precompute(
        tiny_teacher_dir, tiny_corpus_jsonl, out, "--features", "logits,hidden:1", "--dtype", "fp32"
    )
    reader = open_cache(out)
    teacher = load_model(tiny_teacher_dir)
    first = json.loads(tiny_corpus_jsonl.read_text().splitlines()[0])
    example = next(reader.iter_examples())
    assert example["label"] == first["label"]
    encoded = teacher.tokenizer(first["text"], return_tensors="pt")
    assert example["input_ids"].tolist() == encoded["input_ids"][0].tolist()
    with torch.no_grad():
        outputs = teacher.model(**encoded)
    np.testing.assert_allclose(
        example["features"]["logits"][0], outputs.logits[0].numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        example["features"]["hidden.1"], outputs.hidden_states[1][0].numpy(), atol=1e-5
    )


def test_features_derived_from_a_distill_config(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    distill = tmp_path / "distill.yaml"
    distill.write_text(
        yaml.safe_dump(
            {
                "temperature": 8,
                "intermediate_matches": [
                    {
                        "layer_T": 2,
                        "layer_S": 1,
                        "feature": "hidden",
                        "loss": "hidden_mse",
                        "weight": 1,
                    },
                    {
                        "layer_T": [0, 2],
                        "layer_S": [0, 1],
                        "feature": "hidden",
                        "loss": "nst",
                        "weight": 1,
                    },
                    {
                        "layer_T": 1,
                        "layer_S": 1,
                        "feature": "attention",
                        "loss": "attention_mse_sum",
                        "weight": 1,
                    },
                ],
            }
        )
    )
    out = tmp_path / "cache"
    _precompute(tiny_teacher_dir, tiny_corpus_jsonl, out, "--distill-config", str(distill))
    info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
    by_name = {f["name"]: f for f in info["features"]}
    assert by_name["hidden"]["layers"] == [0, 2]
    assert by_name["attention_sum"]["layers"] == [1]
    assert by_name["logits"]["reduction"] == "logprobs"
    assert all(f["dtype"] == "fp16" for f in info["features"])


def test_rerun_resumes_refuses_a_different_spec_and_needs_overwrite(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    cfg = PrecomputeConfig(
        teacher=str(tiny_teacher_dir),
        data=str(tiny_corpus_jsonl),
        out=str(out),
        label_field="label",
        shard_size=16,
    )
    first = run_precompute(cfg, progress=False)
    assert first.examples_computed == 40
    # Kill-like state: drop the manifest and one shard; the rerun recomputes only that shard.
    (out / "manifest.json").unlink()
    import shutil

    shutil.rmtree(out / "shards" / "00001")
    again = run_precompute(cfg, progress=False)
    assert again.shards_skipped == 2 and again.examples_computed == 16
    assert open_cache(out).num_examples == 40

    result = runner.invoke(
        app,
        [
            "precompute",
            "--teacher",
            str(tiny_teacher_dir),
            "--data",
            str(tiny_corpus_jsonl),
            "--out",
            str(out),
            "--label-field",
            "label",
            "--quiet",
            "--shard-size",
            "16",
        ],
    )
    assert result.exit_code != 0 and "--overwrite" in str(result.exception)

    (out / "manifest.json").unlink()
    different = PrecomputeConfig(
        teacher=str(tiny_teacher_dir),
        data=str(tiny_corpus_jsonl),
        out=str(out),
        label_field="label",
        shard_size=16,
        features="logits,hidden:1",
    )
    with pytest.raises(CacheMismatchError, match="different configuration"):
        run_precompute(different, progress=False)


def test_bad_inputs_give_one_clear_error(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        PrecomputeConfig.from_dict(
            {
                "teacher": "t",
                "data": "d",
                "out": "o",
                "dtype": "fp8",
                "batch_size": 0,
                "batchsize": 3,
            }
        )
    text = str(info.value)
    assert "fp8" in text and "batch_size" in text and "did you mean 'batch_size'" in text

    cfg = PrecomputeConfig(
        teacher=str(tiny_teacher_dir),
        data=str(tiny_corpus_jsonl),
        out=str(tmp_path / "c"),
        features="hidden:9",
    )
    with pytest.raises(ConfigError, match=r"layers \[9\] do not exist; the teacher gives 3 hidden"):
        run_precompute(cfg, progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()

    result = runner.invoke(
        app,
        [
            "precompute",
            "--teacher",
            str(tiny_teacher_dir),
            "--data",
            str(tiny_corpus_jsonl),
            "--out",
            str(tmp_path / "d"),
            "--text-field",
            "sentence",
            "--quiet",
        ],
    )
    assert result.exit_code != 0 and "sentence" in str(result.exception)
