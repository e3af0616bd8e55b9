"""The shared config machinery: one loader (file -> flags -> --set) and one set of corpus keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from cachebrew.corpus.fields import CORPUS_FIELD_NAMES, CorpusFields
from cachebrew.errors import ConfigError
from cachebrew.runner.config import DataConfig, EvalConfig, load_distill_config
from cachebrew.teacher.finetune import FinetuneConfig, load_finetune_config
from cachebrew.teacher.precompute import PrecomputeConfig, load_precompute_config
from cachebrew.validation import load_config

PIPELINES = Path(__file__).parents[2] / "pipelines"
CORPUS_CONFIGS = (PrecomputeConfig, FinetuneConfig, DataConfig, EvalConfig)


def _yaml(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_config_precedence_is_file_then_flags_then_overrides(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path, {"teacher": "t", "data": "file.jsonl", "out": "o", "batch_size": 8, "topk": 3}
    )
    flags = {"data": "flag.jsonl", "batch_size": 16, "topk": None}  # None: not given
    cfg = load_config(PrecomputeConfig, path, flags, ["batch_size=32", "split=test"])
    assert (cfg.data, cfg.batch_size, cfg.topk, cfg.split) == ("flag.jsonl", 32, 3, "test")
    assert cfg.teacher == str(tmp_path / "t")  # a file's paths are relative to its folder


def test_load_config_without_a_file_uses_flags_and_overrides_alone() -> None:
    cfg = load_config(DataConfig, None, {"path": "c.jsonl"}, ["label_field=y"])
    assert cfg == DataConfig(path="c.jsonl", label_field="y")


def test_load_config_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"teacher": "t", "data": "d", "dtaa": "x", "batch_size": 0})
    with pytest.raises(ConfigError) as info:
        load_config(PrecomputeConfig, path, {"max_length": 1}, ["bad override"])
    assert len(info.value.problems) == 1  # a malformed --set stops before validation
    assert "--set 'bad override'" in info.value.problems[0]
    with pytest.raises(ConfigError) as info:
        load_config(PrecomputeConfig, path, {"max_length": 1}, ["out=o", "shard_size=-1"])
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 4
    assert "unknown key 'dtaa' (did you mean 'data'?)" in text
    assert "batch_size: expected an integer >= 1, got 0" in text
    assert "max_length: expected an integer >= 2, got 1" in text
    assert "shard_size: expected an integer >= 1, got -1" in text
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['out'\]"):
        load_config(PrecomputeConfig, path, {}, [])


def test_load_config_missing_hint_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['path'\] \(pass --path\)"):
        load_config(DataConfig, None, {}, [], missing_hint=" (pass --path)")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(DataConfig, tmp_path / "absent.yaml", {}, [])
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config(DataConfig, bad, {}, [])


def test_every_command_loader_goes_through_load_config(tmp_path: Path) -> None:
    """The three named loaders give what load_config gives (one merge rule for all)."""
    precompute = {"teacher": "t", "data": "d.jsonl", "out": "o"}
    finetune = {"model": "m", "train": "t.jsonl", "dev": "d.jsonl", "out": "o"}
    distill = {"cache": "c", "student": "s.json", "out": "o"}
    for loader, cls, flags in (
        (load_precompute_config, PrecomputeConfig, precompute),
        (load_finetune_config, FinetuneConfig, finetune),
    ):
        assert loader(None, flags, ["text_field=body"]) == load_config(
            cls, None, flags, ["text_field=body"]
        )
    assert load_distill_config(None, distill, ["batch_size=4"]).batch_size == 4


def test_corpus_fields_are_shared_by_every_corpus_config() -> None:
    for cls in CORPUS_CONFIGS:
        assert issubclass(cls, CorpusFields), cls
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(CORPUS_FIELD_NAMES) <= names, cls
    # defaults that differ on purpose: eval labels are required data; finetune picks by task
    assert EvalConfig(fraction=0.1).label_field == "label"
    assert DataConfig(path="p").label_field is None
    assert FinetuneConfig(model="m", train="t", dev="d", out="o").text_field == "text"
    tagging = FinetuneConfig(model="m", train="t", dev="d", out="o", task="token_classification")
    assert (tagging.text_field, tagging.label_field) == ("tokens", "tags")


@pytest.mark.parametrize("cls", CORPUS_CONFIGS)
def test_corpus_fields_are_validated_the_same_way(cls: type) -> None:
    required = {
        PrecomputeConfig: {"teacher": "t", "data": "d", "out": "o"},
        FinetuneConfig: {"model": "m", "train": "t", "dev": "d", "out": "o"},
        DataConfig: {"path": "p"},
        EvalConfig: {"fraction": 0.5},
    }[cls]
    with pytest.raises(ConfigError) as info:
        cls.from_dict({**required, "text_field": 5, "id_field": 3, "split": ""})
    assert sorted(info.value.problems) == [
        "id_field: expected a non-empty string, got 3",
        "split: expected a non-empty string, got ''",
        "text_field: expected a non-empty string, got 5",
    ]
    cfg = cls.from_dict({**required, "text_field": "body", "text_pair_field": "b2", "split": "x"})
    assert cfg.corpus_fields() == {
        "text_field": "body",
        "text_pair_field": "b2",
        "label_field": cfg.label_field,
        "id_field": None,
        "split": "x",
    }


@pytest.mark.parametrize(
    "path", sorted(PIPELINES.glob("*/precompute.yaml")), ids=lambda p: p.parent.name
)
def test_shipped_precompute_configs_keep_their_corpus_keys(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    cfg = load_precompute_config(str(path), {"teacher": "t", "data": "d", "out": "o"})
    for name in CORPUS_FIELD_NAMES:
        if name in raw:
            assert getattr(cfg, name) == raw[name]


@pytest.mark.parametrize(
    "path", sorted(PIPELINES.glob("*/finetune*.yaml")), ids=lambda p: p.parent.name + p.name
)
def test_shipped_finetune_configs_keep_their_corpus_keys(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    cfg = load_finetune_config(str(path), {"out": "o"})
    for name in CORPUS_FIELD_NAMES:
        if name in raw:
            assert getattr(cfg, name) == raw[name]
