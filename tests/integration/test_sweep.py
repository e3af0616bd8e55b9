"""`cachebrew sweep`: three students over one cache with zero teacher forwards, results tables,
skipping finished runs, failures recorded while the others continue."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cachebrew import models
from cachebrew.cli import app
from cachebrew.errors import ConfigError
from cachebrew.runner.sweep import COLUMNS, derive_name, load_sweep
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path
) -> Path:
    out = tmp_path_factory.mktemp("sweep_cache") / "cache"
    cfg = PrecomputeConfig(
        teacher=str(tiny_teacher_dir),
        data=str(tiny_corpus_jsonl),
        out=str(out),
        label_field="label",
        features="logits,hidden:2",
    )
    run_precompute(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory, tiny_vocab_size: int) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("sweep_students")
    paths = {}
    for layers in (1, 2):
        config = {
            "model_type": "bert",
            "vocab_size": tiny_vocab_size,
            "hidden_size": 16,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 64,
        }
        paths[f"{layers}l"] = directory / f"bert-{layers}l.json"
        paths[f"{layers}l"].write_text(json.dumps(config))
    return paths


def _sweep_file(tmp_path: Path, cache: Path, students: dict[str, Path], **extra: Any) -> Path:
    match = {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    sweep = {
        "base": {
            "cache": str(cache),
            "student": str(students["1l"]),
            "num_epochs": 1,
            "batch_size": 8,
            "eval": {"fraction": 0.2},
        },
        "runs": [
            {"name": "bert-1l-kd"},
            {
                "name": "bert-2l-kd",
                "overrides": {
                    "student": str(students["2l"]),
                    "distill.intermediate_matches": [{**match, "proj": ["linear", 16, 32]}],
                },
            },
            {"name": "bert-2l-labels", "overrides": [f"student={students['2l']}", "kd=false"]},
        ],
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_three_students_over_one_cache_never_touch_a_teacher(
    cache: Path, students: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = models.load_model

    def students_only(spec: Any, **kwargs: Any) -> models.LoadedModel:
        if kwargs.get("role", "teacher") == "teacher":
            raise AssertionError(f"a teacher was loaded: {spec}")
        return real_load(spec, **kwargs)

    monkeypatch.setattr(models, "load_model", students_only)
    out = tmp_path / "sweep"
    result = runner.invoke(
        app, ["sweep", str(_sweep_file(tmp_path, cache, students)), "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, (result.output, result.exception)

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run"] for r in rows] == ["bert-1l-kd", "bert-2l-kd", "bert-2l-labels"]
    # every eval metric that fits the task gets a column after value (the primary's)
    assert list(rows[0]) == [*COLUMNS[:5], "accuracy", "macro_f1", *COLUMNS[5:]]
    assert all(r["accuracy"] == r["value"] and 0 <= float(r["macro_f1"]) <= 1 for r in rows)
    assert [r["kd"] for r in rows] == ["true", "true", "false"]
    assert all(r["status"] == "ok" and r["teacher_forwards"] == "0" for r in rows)
    assert all(r["metric"] == "accuracy" and float(r["steps"]) > 0 for r in rows)
    assert int(rows[1]["params"]) > int(rows[0]["params"])
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 2 + 3 and table[0].startswith("| run | student | kd | metric | value")
    assert "bert-2l-labels" in result.stdout
    for row in rows:
        metrics = json.loads((out / row["run"] / "metrics.json").read_text())
        assert metrics["teacher_forwards"] == 0 and metrics["mode"] in ("cache", "labels")


def test_finished_runs_are_skipped_and_a_failed_run_is_recorded(
    cache: Path, students: dict[str, Path], tmp_path: Path
) -> None:
    sweep_file = _sweep_file(tmp_path, cache, students)
    out = tmp_path / "sweep"
    assert (
        runner.invoke(app, ["sweep", str(sweep_file), "--out", str(out), "--quiet"]).exit_code == 0
    )
    stamp = (out / "bert-1l-kd" / "metrics.json").stat().st_mtime_ns

    data = yaml.safe_load(sweep_file.read_text())
    data["runs"].append({"name": "broken", "overrides": {"distill.intermediate_matches": [
        {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    ]}})  # fmt: skip
    sweep_file.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["sweep", str(sweep_file), "--out", str(out), "--quiet"])
    assert result.exit_code == 1  # one run failed; the table is still written
    assert (out / "bert-1l-kd" / "metrics.json").stat().st_mtime_ns == stamp  # skipped
    with open(out / "results.csv", newline="") as handle:
        rows = {r["run"]: r for r in csv.DictReader(handle)}
    assert (
        rows["broken"]["status"] == "failed" and "hidden.1 is not stored" in rows["broken"]["error"]
    )
    assert all(
        rows[name]["status"] == "ok" for name in ("bert-1l-kd", "bert-2l-kd", "bert-2l-labels")
    )
    # the report is written at the end: the finished runs drawn, the failed one marked
    report = (out / "report.md").read_text()
    assert "4 runs, 3 finished, 1 failed" in report and "**broken**: " in report
    for name in ("quality", "curves", "savings"):
        assert f"![{name}]({name}.png)" in report
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| bert-2l-kd | bert-2l-labels |" in report  # KD and labels twins, side by side
    assert len(list((out / "broken" / "tb").glob("*.hparams"))) == 1


def test_parallel_runs_are_subprocesses_and_failures_do_not_stop_the_others(
    cache: Path, students: dict[str, Path], tmp_path: Path
) -> None:
    sweep = {
        "base": {"cache": str(cache), "student": str(students["1l"]), "num_steps": 2, "batch_size": 8},
        "grid": {"cache": [str(cache), str(tmp_path / "no-such-cache")]},
    }  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "parallel"
    result = runner.invoke(app, ["sweep", str(path), "--out", str(out), "--parallel", "2"])
    assert result.exit_code == 1
    with open(out / "results.csv", newline="") as handle:
        rows = {r["run"]: r for r in csv.DictReader(handle)}
    assert rows["cache"]["status"] == "ok" and rows["cache"]["steps"] == "2"
    assert rows["no-such-cache"]["status"] == "failed"
    assert "no-such-cache" in rows["no-such-cache"]["error"]
    log = (out / "cache" / "log.txt").read_text()
    assert "distill plan" in log and "%|" not in log  # the run's info lines, no bar in a file


def test_grid_expansion_names_and_validation(tmp_path: Path) -> None:
    assert derive_name({"student": "students/bert-1l.json", "kd": False}) == "bert-1l_kd-false"
    assert derive_name({"distill.temperature": 8}) == "temperature-8"
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": {"cache": "c", "student": "s.json"},
                "grid": {"distill.temperature": [2, 8], "kd": [True, False]},
            }
        )
    )
    runs = load_sweep(path)
    assert [r.name for r in runs] == [
        "temperature-2_kd-true",
        "temperature-2_kd-false",
        "temperature-8_kd-true",
        "temperature-8_kd-false",
    ]
    assert runs[3].config(tmp_path).distill_config is None
    assert runs[2].config(tmp_path).out == str(tmp_path / "temperature-8_kd-true")

    path.write_text(
        yaml.safe_dump({"base": {"cache": "c"}, "grids": {}, "grid": {"batch_size": [0]}})
    )
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert "unknown key 'grids' (did you mean 'grid'?)" in str(info.value)
    path.write_text(yaml.safe_dump({"base": {"cache": "c"}, "runs": [{"overrides": {"kd": 1}}]}))
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    text = str(info.value)
    assert "run kd-1: missing required key(s) ['student']" in text
    path.write_text(
        yaml.safe_dump({"base": {"cache": "c", "student": "s"}, "grid": {"batch_size": [0, 2]}})
    )
    with pytest.raises(ConfigError, match=r"run batch_size-0: batch_size: expected an integer"):
        load_sweep(path)
