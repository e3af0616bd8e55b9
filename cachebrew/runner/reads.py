"""What runs read from their cache: the feature spec of one run, the runs of a file.

The features a distillation config reads are worked out beside the feature spec
(:mod:`cachebrew.cache.format.reads`); this module loads the runs. ``cachebrew precompute --from
FILE`` stores the union of what the runs of ``FILE`` (a run config or a sweep file) read: the
command layer loads them with :func:`distill_configs_of`. The dry run (``distill --dry-run``)
prints what one run reads (:func:`run_features`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from cachebrew.cache.format.reads import distill_features
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.config import DistillationConfig
from cachebrew.errors import ConfigError
from cachebrew.runner.config import DistillRunConfig
from cachebrew.validation import PathLike, load_config, load_yaml_mapping

SWEEP_KEYS = frozenset({"base", "grid", "runs"})


def run_features(cfg: DistillRunConfig, **spec_kwargs: Any) -> FeatureSpec | None:
    """The features ``cfg`` reads from its cache; None for hard-label training (nothing is read).

    ``spec_kwargs`` go to :func:`~cachebrew.cache.format.reads.distill_features`.
    """
    if cfg.distill_config is None:
        return None
    return distill_features(cfg.distill_config, **spec_kwargs)


def load_runs(path: PathLike, defaults: Mapping[str, Any] | None = None) -> list[DistillRunConfig]:
    """Every run config of ``path``: a run config (one run) or a sweep file (its runs).

    A file whose top-level keys are among ``base``, ``grid`` and ``runs`` is a sweep file.
    ``defaults`` fill keys neither gives (``precompute --from`` gives ``cache`` and ``out``).

    Raises:
        ConfigError: the file cannot be read, or any run's config is invalid.
    """
    from cachebrew.runner.sweep import load_sweep

    data = load_yaml_mapping(path)
    if data and set(data) <= SWEEP_KEYS:
        return [run.config("-") for run in load_sweep(os.fspath(path), defaults=defaults)]
    return [load_config(DistillRunConfig, path, {}, defaults=defaults)]


def distill_configs_of(path: PathLike) -> dict[str, DistillationConfig]:
    """The distillation config of every run of ``path`` (:func:`load_runs`) that reads from
    the teacher, by label (``PATH: run NAME``); runs on hard labels alone are left out.

    Raises:
        ConfigError: as :func:`load_runs`.
    """
    return {
        f"{path}: run {cfg.run_dir.name}": cfg.distill_config
        for cfg in load_runs(path, defaults={"cache": "-", "out": "-"})
        if cfg.distill_config is not None
    }


def check_distill_config_file(path: PathLike) -> None:
    """Refuse a run config or a sweep file given where a DistillationConfig YAML belongs
    (``precompute --distill-config``), naming ``--from``.

    Raises:
        ConfigError: the file has run-config keys (``cache``, ``student`` ...) or is a sweep.
    """
    data = load_yaml_mapping(path)
    run_only = {f.name for f in fields(DistillRunConfig)} - {
        f.name for f in fields(DistillationConfig)
    }
    telling = sorted(set(data) & run_only)
    if telling or (data and set(data) <= SWEEP_KEYS):
        kind = "run config" if telling else "sweep file"
        raise ConfigError(
            f"distill_config: {path} looks like a {kind} (it has {telling or sorted(data)}), "
            f"not a DistillationConfig: use --from {path} to store what its runs read"
        )
