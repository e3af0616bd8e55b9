"""What a distillation reads from its cache: the features of one ``DistillationConfig``, the
union of what several read, and what a cache stores (:func:`features_to_store`).

``cachebrew precompute --distill-config`` stores what one config reads; ``--from FILE`` stores
the union over the runs of a run config or sweep file (the command layer loads the runs, with
:func:`cachebrew.runner.reads.distill_configs_of`), so a cache and the runs that use it cannot
drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cachebrew.cache.format.codecs import DEFAULT_CODEC
from cachebrew.cache.format.spec import (
    FeatureSpec,
    StoredFeature,
    feature_spec_from_matches,
    parse_feature_spec,
)
from cachebrew.errors import ConfigError

if TYPE_CHECKING:
    from cachebrew.config import DistillationConfig

#: what a cache stores when nothing names a feature
DEFAULT_FEATURES = "logits"


def distill_features(distill: DistillationConfig, **spec_kwargs: Any) -> FeatureSpec:
    """The features ``distill`` reads from its cache: its KD logits and its matches' layers.

    ``spec_kwargs`` go to :func:`~cachebrew.cache.format.spec.feature_spec_from_matches`
    (``dtype``, ``codec``, ``topk``, ``vocab_size``).

    Raises:
        ConfigError: a match names an unknown feature or a bad layer, or nothing is read.
    """
    scheduler = distill.temperature_scheduler
    return feature_spec_from_matches(
        distill.kd_loss_type,
        scheduler if isinstance(scheduler, str) else scheduler[0],
        [m.to_dict() for m in distill.intermediate_matches],
        **spec_kwargs,
    )


def merge_specs(specs: Iterable[FeatureSpec]) -> FeatureSpec:
    """The union of feature specs: each kind once, with every layer any spec stores.

    Raw logits serve both reductions (``log_softmax`` is taken at read time), so they win over
    ``logprobs``; dtype, codec and top-k come from the first spec that names the kind.
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


def features_read(runs: Mapping[str, DistillationConfig], **spec_kwargs: Any) -> FeatureSpec | None:
    """The union of what every run of ``runs`` (label -> its distillation config) reads; None
    when ``runs`` is empty (every run trains on the labels alone).

    Raises:
        ConfigError: a run's matches are invalid; every problem names its run's label.
    """
    specs, problems = [], []
    for label, distill in runs.items():
        try:
            specs.append(distill_features(distill, **spec_kwargs))
        except ConfigError as error:
            problems += [f"{label}: {p}" for p in error.problems]
    if problems:
        raise ConfigError(problems)
    return merge_specs(specs) if specs else None


def features_to_store(
    *,
    features: str | None = None,
    distill: DistillationConfig | None = None,
    runs: Mapping[str, DistillationConfig] | None = None,
    logits_mode: str | None = None,
    vocab_size: int | None = None,
    codec: str = DEFAULT_CODEC,
    dtype: str = "fp16",
    feature_dtypes: Mapping[str, str] | None = None,
) -> FeatureSpec:
    """What a cache stores: the union of ``features`` (CLI form, e.g. ``logits,hidden:0,4``),
    what ``distill`` reads and what ``runs`` read (:func:`features_read`); only ``logits`` when
    none of them names a feature.

    Args:
        logits_mode: ``dense``, ``topk:K``, ``sample:N`` ... for the stored logits (None: dense).
        vocab_size: the teacher's vocabulary, for the width of stored top-k ids.
        dtype: every kind's dtype, but those ``feature_dtypes`` (kind -> dtype) name.

    Raises:
        ConfigError: invalid matches or features; ``feature_dtypes`` names a kind not stored.
    """
    # Parsed with a dtype every kind takes; the real dtypes are set per kind below.
    kwargs: dict[str, Any] = {"dtype": "fp32", "codec": codec}
    specs = [] if distill is None else [distill_features(distill, vocab_size=vocab_size, **kwargs)]
    from_runs = None if runs is None else features_read(runs, vocab_size=vocab_size, **kwargs)
    specs += [] if from_runs is None else [from_runs]
    if features is not None or not specs:
        specs.append(parse_feature_spec(features or DEFAULT_FEATURES, **kwargs))
    spec = merge_specs(specs)
    logits = spec.get("logits")
    if logits_mode is not None and logits is not None:
        logits = replace(logits, logits_mode=logits_mode, vocab_size=vocab_size)
        spec = FeatureSpec((logits, *(f for f in spec if f.kind != "logits")))
    return with_feature_dtypes(spec, dtype, feature_dtypes or {})


def with_feature_dtypes(spec: FeatureSpec, dtype: str, per_kind: Mapping[str, str]) -> FeatureSpec:
    """``spec`` with every kind stored as ``per_kind[kind]`` if given, else as ``dtype``.

    Raises:
        ConfigError: a kind the spec does not store, or a dtype a kind cannot take.
    """
    stored = [feature.kind for feature in spec]
    unknown = sorted(set(per_kind) - set(stored))
    if unknown:
        raise ConfigError(
            f"feature_dtypes names {unknown}, which this cache does not store; it stores {stored}"
        )
    return FeatureSpec(tuple(replace(f, dtype=per_kind.get(f.kind, dtype)) for f in spec))
