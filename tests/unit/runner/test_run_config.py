"""The distill run config: merging YAML, flags and --set; every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cachebrew.errors import ConfigError
from cachebrew.runner.config import DistillRunConfig, load_distill_config

BASE = {"cache": "caches/sst", "student": "students/s.json", "out": "runs/s"}


def test_yaml_then_flags_then_set_overrides(tmp_path: Path) -> None:
    path = tmp_path / "distill.yaml"
    path.write_text(
        yaml.safe_dump(
            {**BASE, "batch_size": 16, "distill": {"temperature": 8}, "training": {"seed": 1}}
        )
    )
    cfg = load_distill_config(
        str(path),
        {"cache": "caches/other", "student": None, "out": "runs/x", "teacher": None},
        ["distill.temperature=2", "training.seed=7", "batch_size=4"],
    )
    assert cfg.cache == "caches/other"  # a flag: as given, relative to the working directory
    assert cfg.student == str(tmp_path / "students/s.json")  # the file's folder
    assert cfg.distill is not None and cfg.distill.temperature == 2.0
    assert cfg.training.seed == 7 and cfg.batch_size == 4
    assert cfg.num_epochs == 3 and cfg.num_steps is None  # the default length


def test_runner_owns_output_and_log_dirs_and_the_default_seed() -> None:
    cfg = DistillRunConfig.from_dict(BASE)
    train = cfg.train_config()
    assert train.output_dir == str(Path("runs/s") / "checkpoints")
    assert train.log_dir == str(Path("runs/s") / "tb")
    assert train.seed == 0
    assert "output_dir" not in cfg.to_dict()["training"]
    assert DistillRunConfig.from_dict(cfg.to_dict()) == cfg  # config.yaml is reusable


def test_every_problem_is_reported_at_once_naming_the_field() -> None:
    data = {
        **BASE,
        "distil": {},
        "training": {"output_dir": "x", "sed": 1},
        "distill": {"temperature": -1},
        "num_epochs": 2,
        "num_steps": 3,
        "optimizer": {"lr": 0},
        "schedule": {"name": "triangle"},
        "eval": {"metric": "f1"},
    }
    with pytest.raises(ConfigError) as info:
        DistillRunConfig.from_dict(data)
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 9, problems
    assert "unknown key 'distil' (did you mean 'distill'?)" in text
    assert "training.output_dir: set by the runner" in text
    assert "training: unknown key 'sed' (did you mean 'seed'?)" in text
    assert "distill.temperature: expected a number > 0, got -1" in text
    assert "num_epochs (2) and num_steps (3) both given" in text
    assert "optimizer.lr: expected a number > 0, got 0" in text
    assert "schedule.name: unknown schedule 'triangle'" in text
    assert "eval.metric: unknown metric 'f1'" in text
    assert "eval.data or fraction: give exactly one" in text


def test_bad_intermediate_match_names_its_index() -> None:
    match = {"layer_T": 1, "layer_S": 1, "feature": "hiden", "loss": "hidden_mse", "weight": 1}
    with pytest.raises(ConfigError, match=r"distill\.intermediate_matches\[0\]\.feature"):
        DistillRunConfig.from_dict({**BASE, "distill": {"intermediate_matches": [match]}})


def test_missing_required_keys_say_where_to_give_them() -> None:
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['cache', 'out'\].*--cache"):
        load_distill_config(None, {"student": "s.json"})


def test_hard_labels_only_via_kd_false_or_distill_null() -> None:
    assert DistillRunConfig.from_dict({**BASE, "kd": False}).distill_config is None
    assert DistillRunConfig.from_dict({**BASE, "distill": None}).distill_config is None
    assert DistillRunConfig.from_dict(BASE).distill_config is not None


def test_nested_sections_data_eval_init_and_set_errors() -> None:
    cfg = DistillRunConfig.from_dict(
        {
            **BASE,
            "data": "corpus.jsonl",
            "eval": {"fraction": 0.1},
            "init_from_teacher": {"path": "t", "layers": [0, 2]},
        }
    )
    assert cfg.data is not None and cfg.data.path == "corpus.jsonl"
    assert cfg.init_from_teacher is not None and cfg.init_from_teacher.layers == (0, 2)
    with pytest.raises(ConfigError) as info:
        DistillRunConfig.from_dict(
            {
                **BASE,
                "eval": {"fraction": 1.5},
                "init_from_teacher": {"path": "t", "layers": [-1]},
                "task": "ner",
            }
        )
    text = str(info.value)
    assert "eval.fraction: expected a number in (0, 1), got 1.5" in text
    assert "init_from_teacher.layers: expected a list of layer indices >= 0" in text
    assert "task: unknown task 'ner'" in text
    with pytest.raises(ConfigError, match="expected key=value"):
        load_distill_config(None, BASE, ["batch_size"])


def test_eval_metrics_list_every_steps_and_keep_checkpoints() -> None:
    from cachebrew.runner.config import EvalConfig

    cfg = EvalConfig(data="dev.jsonl", metrics=["macro_f1", "accuracy"], every_steps=50)
    assert cfg.metric_names("sequence_classification") == ("macro_f1", "accuracy")
    assert EvalConfig(fraction=0.1, metric="macro_f1").metric_names("x") == ("macro_f1",)
    assert EvalConfig(fraction=0.1).metric_names("token_classification")[0] == "token_f1"
    with pytest.raises(ConfigError) as error:
        EvalConfig(fraction=0.1, metrics=["acc"], every_steps=0)
    text = str(error.value)
    assert "metrics[0]: unknown metric 'acc'" in text and "every_steps" in text
    base = {"cache": "c", "student": "s", "out": "o"}
    assert load_distill_config(None, base).keep_checkpoints == 2
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        load_distill_config(None, {**base, "keep_checkpoints": 0})
