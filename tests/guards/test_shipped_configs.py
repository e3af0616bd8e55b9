"""Every YAML under pipelines/ loads and validates with its loader from any working directory
(paths in a config are relative to its folder), names only files that exist (apart from what
`make` builds under pipelines/out/), and every sweep's runs read only features that the cache
their pipeline builds stores (each precompute.yaml derives its features from its sweep).

The glob is recursive, so a new YAML is covered the day it is added; a YAML whose name says
nothing about its schema fails here until it is given one of the known stems.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachebrew.cache.format.spec import FeatureSpec, feature_spec_from_matches
from cachebrew.runner.config import load_distill_config
from cachebrew.runner.reads import distill_configs_of
from cachebrew.runner.sweep import load_sweep
from cachebrew.teacher.finetune import load_finetune_config
from cachebrew.teacher.precompute import load_precompute_config, resolve_feature_spec

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _shipped(pattern: str) -> list[Path]:
    """The YAMLs under pipelines/, without what the pipelines write (``pipelines/out/``)."""
    return sorted(
        p for p in PIPELINES.rglob(pattern) if "out" not in p.relative_to(PIPELINES).parts[:1]
    )


SHIPPED = _shipped("*.yaml")

OUT = PIPELINES / "out"  # what `make` builds (the configs' defaults name it)


def _load(path: Path) -> Any:
    loaders: dict[str, Callable[[Path], Any]] = {
        "precompute": lambda p: load_precompute_config(str(p), {}),
        "finetune": lambda p: load_finetune_config(str(p), {"out": "teacher-dir"}),
        "distill": lambda p: load_distill_config(str(p), {"out": "run-dir"}),
        "sweep": lambda p: load_sweep(p),
    }
    kind = path.stem.split("-")[0]
    if kind not in loaders:
        pytest.fail(f"{path}: no loader for a YAML named {path.name}; name it {sorted(loaders)}-*")
    return loaders[kind](path)


def test_there_are_shipped_configs() -> None:
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(PIPELINES)))
def test_shipped_config_loads_and_validates_from_any_folder(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # not pipelines/: the paths resolve against the file's folder
    assert _load(path)
    text = path.read_text(encoding="utf-8")
    for placeholder in ("TEACHER_DIR", "TEST_SPLIT", "CACHE_DIR"):
        assert placeholder not in text, f"{path.name} holds the placeholder {placeholder}"


def _named_paths(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in _named_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _named_paths(v)]
    return [value] if isinstance(value, str) and value.startswith(str(PIPELINES)) else []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(PIPELINES)))
def test_shipped_config_names_files_that_exist(path: Path) -> None:
    loaded = _load(path)
    configs = (
        [run.config(OUT / "sweep") for run in loaded] if path.stem.startswith("sweep") else [loaded]
    )
    for cfg in configs:
        for named in _named_paths(cfg.to_dict()):
            if not named.startswith(str(OUT)) and named != "run-dir":
                assert Path(named).exists(), f"{path.name} names {named}, which does not exist"


def _stored(spec: FeatureSpec) -> dict[str, set[int]]:
    return {feature.kind: set(feature.layers) for feature in spec}


SWEEPS = _shipped("sweep*.yaml")


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: str(p.relative_to(PIPELINES)))
def test_sweep_runs_read_only_what_their_cache_stores(sweep: Path) -> None:
    precompute = load_precompute_config(str(sweep.parent / "precompute.yaml"), {})
    assert precompute.from_runs is not None, "derive the cache from a sweep: from_runs: sweep.yaml"
    assert Path(precompute.from_runs).parent == sweep.parent
    runs = distill_configs_of(precompute.from_runs)
    cached = _stored(resolve_feature_spec(precompute, vocab_size=None, runs=runs))
    for run in load_sweep(sweep):
        distill = run.config("sweep-dir").distill_config
        if distill is None:  # hard labels only: reads no teacher feature
            continue
        needed = feature_spec_from_matches(
            distill.kd_loss_type, None, [m.to_dict() for m in distill.intermediate_matches]
        )
        for kind, layers in _stored(needed).items():
            assert kind in cached, f"{sweep.name} run {run.name} reads {kind}, not cached"
            missing = layers - cached[kind]
            assert not missing, f"{sweep.name} run {run.name} reads {kind} {sorted(missing)}"
