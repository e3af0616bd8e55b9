"""Configs in one folder run from another: paths resolve against the config file's folder,
``precompute --from`` stores what the runs read, ``--dry-run`` writes nothing, an identical
precompute is up to date, ``verify`` ends with PASS/FAIL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cachebrew.cache import open_cache
from cachebrew.cli import app
from cachebrew.errors import ConfigError
from cachebrew.runner.reads import distill_configs_of
from cachebrew.runner.sweep import load_sweep
from cachebrew.teacher.precompute import load_precompute_config, resolve_feature_spec
from cachebrew.validation import resolve_path

runner = CliRunner()
MATCH = {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_teacher_dir: Path,
    tiny_corpus_jsonl: Path,
    tiny_vocab_size: int,
) -> Path:
    """project/{teacher/, corpus.jsonl, students/s.json, configs/*.yaml} with relative paths."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_teacher_dir, root / "teacher")
    shutil.copy(tiny_corpus_jsonl, root / "corpus.jsonl")
    (root / "students").mkdir()
    student = {"model_type": "bert", "vocab_size": tiny_vocab_size, "hidden_size": 16,
               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
               "max_position_embeddings": 64}  # fmt: skip
    (root / "students" / "s.json").write_text(json.dumps(student))
    configs = root / "configs"
    configs.mkdir()
    run = {
        "cache": "../cache",
        "student": "../students/s.json",
        "out": "../runs/a",
        "distill": {
            "temperature": 4,
            "intermediate_matches": [{**MATCH, "proj": ["linear", 16, 32]}],
        },
        "num_steps": 2,
        "batch_size": 8,
        "eval": {"fraction": 0.2},
    }
    (configs / "run.yaml").write_text(yaml.safe_dump(run))
    precompute = {"teacher": "../teacher", "data": "../corpus.jsonl", "out": "../cache",
                  "from_runs": "run.yaml", "label_field": "label", "shard_size": 16}  # fmt: skip
    (configs / "precompute.yaml").write_text(yaml.safe_dump(precompute))
    return root


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_a_run_config_in_one_folder_runs_from_another(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # neither the configs' folder nor the project
    configs = project / "configs"
    missing = runner.invoke(app, ["distill", "--config", str(configs / "run.yaml"), "--dry-run"])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr  # the run would stop
    assert "the features logits:logprobs,hidden:2: precompute them first" in missing.stderr
    assert not (project / "cache").exists() and not (project / "runs").exists()

    _cli("precompute", "--config", str(configs / "precompute.yaml"), "--quiet")
    spec = open_cache(project / "cache").spec  # the union of what run.yaml reads
    assert spec.to_cli() == "logits:logprobs,hidden:2"
    again = _cli("precompute", "--config", str(configs / "precompute.yaml"), "--quiet")
    assert "is up to date" in again

    plan = _cli("distill", "--config", str(configs / "run.yaml"), "--dry-run")
    resolved = yaml.safe_load(plan.split("# plan:")[0])
    assert resolved["cache"] == str(project / "cache") and resolved["batch_size"] == 8
    assert resolved["shuffle_buffer"] == 1024  # every default is shown
    assert "steps: 2 optimizer steps" in plan and "checked against the config" in plan
    assert not (project / "runs").exists()  # a dry run writes nothing

    _cli("distill", "--config", str(configs / "run.yaml"), "--quiet")
    written = yaml.safe_load((project / "runs" / "a" / "config.yaml").read_text())
    assert written["student"] == str(project / "students" / "s.json")

    verdict = _cli("verify", str(project / "cache"), "--teacher", str(project / "teacher"))
    last = verdict.strip().splitlines()[-1]
    assert last.startswith("PASS: checksums ok; values within tolerance") and "<= 0.002" in last


def test_precompute_from_adds_features_and_flags_stay_relative_to_the_working_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    cfg = load_precompute_config(
        str(project / "configs" / "precompute.yaml"), {"features": "hidden:1", "out": "other"}
    )
    assert cfg.out == "other" and cfg.from_runs == str(project / "configs" / "run.yaml")
    spec = resolve_feature_spec(cfg, vocab_size=None, runs=distill_configs_of(cfg.from_runs))
    assert spec.to_cli() == "logits:logprobs,hidden:1,2"


def test_sweep_paths_dry_run_and_duplicate_runs(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = project / "configs" / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": "run.yaml",
                "runs": [{"name": "kd"}, {"name": "labels", "overrides": {"kd": False}}],
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    runs = load_sweep(sweep, ["eval.data=dev.jsonl", "eval.fraction=null"])
    cfg = runs[0].config("sw")
    assert cfg.student == str(project / "students" / "s.json")  # base file's folder
    assert cfg.eval is not None and cfg.eval.data == str(tmp_path / "dev.jsonl")  # --set: cwd
    assert cfg.out == str(tmp_path / "sw" / "kd")

    out = _cli("sweep", str(sweep), "--out", "sw", "--dry-run")
    assert "# run kd: resolved config" in out and "features read: none (hard labels only)" in out
    assert not (tmp_path / "sw").exists()

    sweep.write_text(yaml.safe_dump({"base": "run.yaml", "runs": [{"name": "a"}, {"name": "b"}]}))
    with pytest.raises(ConfigError, match="runs a and b have identical configs"):
        load_sweep(sweep)
    sweep.write_text(yaml.safe_dump({"base": "run.yaml", "grid": {"kd": [True, True]}}))
    with pytest.raises(ConfigError, match="run kd-true: 2 runs have this name"):
        load_sweep(sweep)


def test_resolve_path_leaves_urls_factories_and_absolute_paths(tmp_path: Path) -> None:
    assert resolve_path("s3://bucket/cache", tmp_path) == "s3://bucket/cache"
    assert resolve_path("my_models:build", tmp_path) == "my_models:build"
    assert resolve_path("/abs/x", tmp_path) == "/abs/x"
    assert resolve_path("a/../b.json", tmp_path) == str(tmp_path / "b.json")
