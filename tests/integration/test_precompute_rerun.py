"""Rerun semantics by content: a precompute rerun is "up to date" whatever spelling of the paths
(relative, absolute, through a precompute YAML) produced the same teacher, corpus and spec, and
says what differs when it is not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cachebrew.cli import app

runner = CliRunner()


def _precompute(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["precompute", "--quiet", *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_rerun_is_up_to_date_however_the_paths_are_spelled(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_teacher_dir, tmp_path / "out" / "teacher")
    shutil.copy(tiny_corpus_jsonl, tmp_path / "corpus.jsonl")
    monkeypatch.chdir(tmp_path)
    flags = ["--data", "corpus.jsonl", "--out", "caches/c", "--label-field", "label"]
    code, _, err = _precompute("--teacher", "out/teacher", *flags)
    assert code == 0, err
    source = json.loads((tmp_path / "caches/c/manifest.json").read_text())["teacher"]["source"]
    assert source == str(tmp_path / "out" / "teacher")  # recorded absolute: usable from any cwd

    for teacher in (str(tmp_path / "out" / "teacher"), "./out/../out/teacher"):
        code, out, err = _precompute("--teacher", teacher, *flags)
        assert code == 0 and "is up to date" in out, (teacher, err)

    (tmp_path / "configs").mkdir()
    spelled = {"teacher": "../out/teacher", "data": "../corpus.jsonl", "out": "../caches/c",
               "label_field": "label"}  # fmt: skip
    (tmp_path / "configs" / "precompute.yaml").write_text(yaml.safe_dump(spelled))
    code, out, err = _precompute("--config", "configs/precompute.yaml")
    assert code == 0 and "is up to date" in out, err

    code, _, err = _precompute("--config", "configs/precompute.yaml", "--max-length", "32")
    assert code == 1 and "differs from this run" in err, err
    assert "max_length: cache has 64, this run has 32" in err and "--overwrite" in err
