"""Every YAML under pipelines/ loads and validates with its loader, and every sweep's runs read
only features that the cache their pipeline builds stores.

The glob is recursive, so a new YAML is covered the day it is added; a YAML whose name says
nothing about its schema fails here until it is given one of the known stems.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachebrew.cache.spec import FeatureSpec, feature_spec_from_matches
from cachebrew.config import DistillationConfig
from cachebrew.runner.config import load_distill_config
from cachebrew.runner.sweep import load_sweep
from cachebrew.teacher.finetune import load_finetune_config
from cachebrew.teacher.precompute import load_precompute_config, resolve_feature_spec

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
SHIPPED = sorted(PIPELINES.rglob("*.yaml"))

# What the Makefiles give on the command line (the shipped files leave these to them).
_PRECOMPUTE_FLAGS = {"teacher": "teacher-dir", "data": "train.jsonl", "out": "cache-dir"}
_RUN_FLAGS = {"cache": "cache-dir", "out": "run-dir"}


def _load(path: Path) -> Any:
    loaders: dict[str, Callable[[Path], Any]] = {
        "precompute": lambda p: load_precompute_config(str(p), _PRECOMPUTE_FLAGS),
        "finetune": lambda p: load_finetune_config(str(p), {"out": "teacher-dir"}),
        "distill": lambda p: load_distill_config(str(p), _RUN_FLAGS),
        "sweep": lambda p: load_sweep(p, ["cache=cache-dir"]),
        "matches": lambda p: DistillationConfig.from_yaml(str(p)),
    }
    kind = path.stem.split("-")[0]
    if kind not in loaders:
        pytest.fail(f"{path}: no loader for a YAML named {path.name}; name it {sorted(loaders)}-*")
    return loaders[kind](path)


def test_there_are_shipped_configs() -> None:
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(PIPELINES)))
def test_shipped_config_loads_and_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PIPELINES)  # the Makefiles run from pipelines/
    assert _load(path)


def _stored(spec: FeatureSpec) -> dict[str, set[int]]:
    return {feature.kind: set(feature.layers) for feature in spec}


SWEEPS = sorted(PIPELINES.rglob("sweep*.yaml"))


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: str(p.relative_to(PIPELINES)))
def test_sweep_runs_read_only_what_their_cache_stores(
    sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(PIPELINES)
    precompute = load_precompute_config(str(sweep.parent / "precompute.yaml"), _PRECOMPUTE_FLAGS)
    cached = _stored(resolve_feature_spec(precompute, vocab_size=None))
    for run in load_sweep(sweep, ["cache=cache-dir"]):
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
