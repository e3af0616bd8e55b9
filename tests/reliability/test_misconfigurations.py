"""Misconfigurations that stop before training (issue 24): each one is exit 1 and one error that
names the fix, where before the command exited 0 and did something else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from reliability_helpers import Outcome

HINT = "(rerun with --debug for the traceback)"


@pytest.fixture(scope="module")
def unlabelled_cache(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path
) -> Path:
    """A cache written without --label-field: teacher logits, no labels."""
    from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

    out = tmp_path_factory.mktemp("unlabelled") / "cache"
    cfg = PrecomputeConfig(
        teacher=str(tiny_teacher_dir), data=str(tiny_corpus_jsonl), out=str(out), shard_size=16
    )
    run_precompute(cfg, progress=False)
    return out


def _distill(cache: Path, student: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--cache", str(cache), "--student", str(student), "--out", str(out),
            "--quiet", "--set", "num_steps=1", "--set", "batch_size=8", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "named"),
    [("distill.hard_label_weight=1", "hard_label_weight=1"),
     ("distill.probability_shift=true", "probability_shift")],
)  # fmt: skip
def test_a_kd_loss_that_reads_labels_on_a_cache_without_labels_stops(
    cli: Callable[..., Outcome],
    unlabelled_cache: Path,
    student_json: Path,
    tmp_path: Path,
    setting: str,
    named: str,
) -> None:
    result = cli(*_distill(unlabelled_cache, student_json, tmp_path / "run", "--set", setting))
    assert result.code == 1, result.err
    assert named in result.error_line and "needs labels, but the cache has none" in result.err
    assert "--label-field" in result.err and result.err.rstrip().endswith(HINT)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_kd_alone_on_a_cache_without_labels_still_trains(
    cli: Callable[..., Outcome], unlabelled_cache: Path, student_json: Path, tmp_path: Path
) -> None:
    result = cli(*_distill(unlabelled_cache, student_json, tmp_path / "run"))
    assert result.code == 0, result.err


def test_a_dry_run_with_a_mistyped_cache_exits_1(
    cli: Callable[..., Outcome], student_json: Path, tmp_path: Path
) -> None:
    result = cli(*_distill(tmp_path / "cahce", student_json, tmp_path / "run", "--dry-run"))
    assert result.code == 1 and "does not exist" in result.error_line
    assert "precompute them first" in result.err and not (tmp_path / "run").exists()


def test_a_dry_run_with_eval_data_without_its_label_column_exits_1(
    cli: Callable[..., Outcome], built_cache: Path, student_json: Path, tmp_path: Path
) -> None:
    unlabelled = tmp_path / "eval.jsonl"
    unlabelled.write_text("".join(json.dumps({"text": f"the cat {i}"}) + "\n" for i in range(4)))
    run = {"cache": str(built_cache), "student": str(student_json), "out": str(tmp_path / "run"),
           "num_steps": 1, "batch_size": 8, "eval": {"data": str(unlabelled)}}  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run))
    dry = cli("distill", "--config", config, "--dry-run")
    assert dry.code == 1 and "label" in dry.error_line, dry.err
    real = cli("distill", "--config", config, "--quiet")  # the real run stops the same way
    assert real.code == 1 and real.error_line == dry.error_line

    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": "a", "label": i % 3}) + "\n" for i in range(4)))
    run["eval"] = {"data": str(labelled)}
    config.write_text(yaml.safe_dump(run))
    ok = cli("distill", "--config", config, "--dry-run")
    assert ok.code == 0 and "dry run: 1 run(s) checked" in ok.out, ok.err


def test_eval_refuses_labels_outside_the_models_classes_as_finetune_does(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "test.jsonl"
    rows = [{"text": "the cat sat", "label": label} for label in (0, 1, 2, 5, 12)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = cli("eval", tiny_teacher_dir, "--data", data)
    assert result.code == 1, result.out
    assert "labels [5, 12] out of range for the model's 3 classes (0..2)" in result.error_line
    data.write_text("".join(json.dumps(row) + "\n" for row in rows[:3]))
    assert cli("eval", tiny_teacher_dir, "--data", data).code == 0
