"""A model's max length travels with it: ``finetune`` records the length it trained with, and
``eval`` and ``precompute`` use it unless given another; ``final/`` records the student's."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cachebrew.cli import app

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_finetunes_max_length_is_used_by_eval_and_precompute(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    teacher = tmp_path / "teacher"
    _ok("finetune", "--model", tiny_teacher_dir, "--train", tiny_corpus_jsonl, "--dev",
        tiny_corpus_jsonl, "--out", teacher, "--epochs", "1", "--batch-size", "20",
        "--max-length", "12")  # fmt: skip
    saved = json.loads((teacher / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 12  # the source said 64 (its position limit)

    report = json.loads(_ok("eval", teacher, "--data", tiny_corpus_jsonl, "--json"))
    assert report["max_length"] == 12
    overridden = json.loads(
        _ok("eval", teacher, "--data", tiny_corpus_jsonl, "--json", "--max-length", "32")
    )
    assert overridden["max_length"] == 32

    cache = tmp_path / "cache"
    _ok("precompute", "--teacher", teacher, "--data", tiny_corpus_jsonl, "--out", cache, "--quiet")
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["extra"]["max_length"] == 12
