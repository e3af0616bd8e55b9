"""`cachebrew eval` and RUN_DIR/final/: the run's own figures come back from the saved student.

A tiny distill run with eval on a labelled file (string labels, so the cache records label
names), evaluation every 3 steps and the default ``keep_checkpoints: 2``; then its ``final/``
is loaded with ``AutoModelForSequenceClassification.from_pretrained`` and scored with
``cachebrew eval`` (run dir, ``final/``, a checkpoint), each equal to the run's metrics.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cachebrew.cli import app
from cachebrew.metrics import accuracy, predict
from cachebrew.models import load_tokenizer
from cachebrew.runner.config import EvalConfig
from cachebrew.runner.evaluate import corpus_eval_batches
from cachebrew.runner.tokens import StudentTokens
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

runner = CliRunner()
NAMES = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, tiny_sentences: list[str]) -> Path:
    path = tmp_path_factory.mktemp("eval_corpus") / "corpus.jsonl"
    rows = [{"text": s, "label": NAMES[i % 3]} for i, s in enumerate(tiny_sentences[:40])]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def run_dir(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_teacher_dir: Path,
    tiny_vocab_size: int,
    labelled: Path,
) -> Path:
    tmp = tmp_path_factory.mktemp("eval_run")
    cache = tmp / "cache"
    run_precompute(
        PrecomputeConfig(
            teacher=str(tiny_teacher_dir), data=str(labelled), out=str(cache),
            label_field="label", features="logits", dtype="fp32", shard_size=16,
        ),
        progress=False,
    )  # fmt: skip
    student = tmp / "student.json"
    student.write_text(
        json.dumps(
            {"model_type": "bert", "vocab_size": tiny_vocab_size, "hidden_size": 16,
             "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
             "max_position_embeddings": 64}
        )
    )  # fmt: skip
    config = tmp / "distill.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cache": str(cache), "student": str(student), "out": str(tmp / "run"),
                "num_epochs": 3, "batch_size": 8, "optimizer": {"lr": 1e-3},
                "eval": {"data": str(labelled), "metrics": ["accuracy", "macro_f1"],
                         "every_steps": 3},
            }
        )
    )  # fmt: skip
    result = runner.invoke(app, ["distill", "--quiet", "--config", str(config)])
    assert result.exit_code == 0, (result.output, result.exception)
    return tmp / "run"


def _cache_max_length(run_dir: Path) -> int:
    manifest = json.loads((run_dir.parent / "cache" / "manifest.json").read_text())
    return int(manifest["extra"]["max_length"])


def _eval(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["eval", *args, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return dict(json.loads(result.stdout))


def test_final_is_a_hugging_face_directory_with_tokenizer_and_label_names(run_dir: Path) -> None:
    final = run_dir / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (final / name).is_file(), name
    config = json.loads((final / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert not config.get("output_hidden_states") and not config.get("output_attentions")
    length = _cache_max_length(run_dir)
    assert json.loads((final / "tokenizer_config.json").read_text())["model_max_length"] == length


def test_from_pretrained_predictions_equal_the_runs_evaluation(
    run_dir: Path, labelled: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "final")
    tokens = StudentTokens(load_tokenizer(run_dir / "final"))
    length = _cache_max_length(run_dir)
    batches, count = corpus_eval_batches(EvalConfig(data=str(labelled)), tokens, length)
    predictions, labels = predict(model, None, batches)
    assert count == 40 == metrics["eval_examples"]
    assert accuracy(predictions, labels) == metrics["value"]


def test_cachebrew_eval_of_run_final_and_checkpoint_equals_metrics_json(
    run_dir: Path, labelled: Path
) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy"
    assert set(metrics["eval_metrics"]) == {"accuracy", "macro_f1"}
    checkpoint = run_dir / "checkpoints" / "checkpoint-gs15"
    for model in (run_dir, run_dir / "final", checkpoint):
        report = _eval(str(model), "--data", str(labelled))
        assert report["metrics"] == metrics["eval_metrics"], model
        assert report["task"] == "sequence_classification" and report["examples"] == 40
    only = _eval(str(run_dir), "--data", str(labelled), "--metrics", "macro_f1")
    assert list(only["metrics"]) == ["macro_f1"]


def test_eval_during_training_gives_a_curve_and_tensorboard_scalars(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # 40 examples, batch 8: 5 steps per epoch, 15 steps; every 3 steps + each epoch's checkpoint
    assert [row["step"] for row in metrics["eval_curve"]] == [3, 5, 6, 9, 10, 12, 15]
    assert metrics["eval_curve"][-1]["accuracy"] == metrics["value"]
    events = b"".join(p.read_bytes() for p in (run_dir / "tb").glob("events.out.tfevents.*"))
    assert b"eval/accuracy" in events and b"eval/macro_f1" in events


def test_keep_checkpoints_keeps_the_latest_and_the_best(run_dir: Path) -> None:
    curve = {row["step"]: row["accuracy"] for row in json.loads(
        (run_dir / "metrics.json").read_text())["eval_curve"]}  # fmt: skip
    best = max((5, 10, 15), key=lambda step: (curve[step], -step))  # first of equals wins
    expected = {15, best} if best != 15 else {10, 15}
    kept = {int(p.name.removeprefix("checkpoint-gs")) for p in (run_dir / "checkpoints").glob(
        "checkpoint-gs*")}  # fmt: skip
    assert kept == expected


def test_eval_of_a_teacher_directory_prints_every_metric(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path
) -> None:
    result = runner.invoke(app, ["eval", str(tiny_teacher_dir), "--data", str(tiny_corpus_jsonl)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "sequence_classification" in result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()[-2:]] == ["accuracy", "macro_f1"]


def test_eval_errors_are_one_line(tmp_path: Path, tiny_teacher_dir: Path, labelled: Path) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path), "--data", str(labelled)])
    assert result.exit_code == 1 and "not a run directory" in result.output
    result = runner.invoke(
        app, ["eval", str(tiny_teacher_dir), "--data", str(labelled), "--metrics", "f2"]
    )
    assert result.exit_code == 1 and "unknown ['f2']" in result.output
    assert torch.is_grad_enabled()
