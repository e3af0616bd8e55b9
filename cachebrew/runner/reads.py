"""What runs read from their cache: the feature spec of one run, of every run of a file.

``cachebrew precompute --from FILE`` stores the union of what the runs of ``FILE`` (a run
config or a sweep file) read, so a cache and the sweeps that use it cannot drift apart; the
dry run (``distill --dry-run``) prints what one run reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from typing import Any

from cachebrew.cache.format.spec import FeatureSpec, StoredFeature, feature_spec_from_matches
from cachebrew.config import DistillationConfig
from cachebrew.errors import ConfigError
from cachebrew.runner.config import DistillRunConfig
from cachebrew.validation import PathLike, load_config, load_yaml_mapping

SWEEP_KEYS = frozenset({"base", "grid", "runs"})


def run_features(cfg: DistillRunConfig, **spec_kwargs: Any) -> FeatureSpec | None:
    """The features ``cfg`` reads from its cache: its KD logits and its matches' layers.

    ``spec_kwargs`` go to :func:`~cachebrew.cache.format.spec.feature_spec_from_matches` (``dtype``,
    ``codec``, ``topk``, ``vocab_size``). None for hard-label training (nothing is read).
    """
    return (
        None if cfg.distill_config is None else distill_features(cfg.distill_config, **spec_kwargs)
    )


def distill_features(distill: DistillationConfig, **spec_kwargs: Any) -> FeatureSpec:
    """The features a :class:`~cachebrew.config.DistillationConfig` reads (:func:`run_features`)."""
    scheduler = distill.temperature_scheduler
    return feature_spec_from_matches(
        distill.kd_loss_type,
        scheduler if isinstance(scheduler, str) else scheduler[0],
        [m.to_dict() for m in distill.intermediate_matches],
        **spec_kwargs,
    )


def distill_config_features(path: PathLike, **spec_kwargs: Any) -> FeatureSpec:
    """What the DistillationConfig YAML at ``path`` reads (``precompute --distill-config``).

    Raises:
        ConfigError: the file is a run config or a sweep file (use ``--from``), or not a valid
            DistillationConfig.
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
    return distill_features(DistillationConfig.from_yaml(path), **spec_kwargs)


def merge_specs(specs: Iterable[FeatureSpec]) -> FeatureSpec:
    """The union of feature specs: each kind once, with every layer any spec stores.

    Raw logits serve both reductions (``log_softmax`` is taken at read time), so they win over
    ``logprobs``; dtype, codec and top-k come from the first spec that names the kind.

    Raises:
        ConfigError: ``specs`` is empty (the spec would store nothing).
    """
    merged: dict[str, StoredFeature] = {}
    for spec in specs:
        for feature in spec:
            known = merged.get(feature.kind)
            if known is None:
                merged[feature.kind] = feature
                continue
            reduction = "raw" if "raw" in (known.reduction, feature.reduction) else known.reduction
            layers = tuple(set(known.layers) | set(feature.layers))
            merged[feature.kind] = replace(known, layers=layers, reduction=reduction)
    return FeatureSpec(tuple(merged.values()))


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


def features_read_by(path: PathLike, **spec_kwargs: Any) -> FeatureSpec | None:
    """The union of what every run of ``path`` (:func:`load_runs`) reads; None if no run
    reads anything from the teacher (all train on hard labels).

    Raises:
        ConfigError: as :func:`load_runs`, or a run's matches are invalid (named by run).
    """
    specs, problems = [], []
    for cfg in load_runs(path, defaults={"cache": "-", "out": "-"}):
        try:
            spec = run_features(cfg, **spec_kwargs)
        except ConfigError as error:
            problems += [f"{path}: run {cfg.run_dir.name}: {p}" for p in error.problems]
            continue
        if spec is not None:
            specs.append(spec)
    if problems:
        raise ConfigError(problems)
    return merge_specs(specs) if specs else None
