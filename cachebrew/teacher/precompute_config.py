"""What ``cachebrew precompute`` is asked to do: its config and the features it stores.

:class:`PrecomputeConfig` holds every YAML key / CLI flag; :func:`resolve_feature_spec` turns
``features``, ``distill_config`` and ``from_runs`` into the :class:`FeatureSpec` the cache stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cachebrew.cache import FeatureSpec
from cachebrew.cache.format.codecs import DEFAULT_CODEC
from cachebrew.cache.format.reads import DEFAULT_FEATURES, features_to_store, with_feature_dtypes
from cachebrew.cache.format.spec import DTYPES
from cachebrew.cache.logits.sparse import parse_logits_mode
from cachebrew.config import DistillationConfig
from cachebrew.corpus import CorpusFields
from cachebrew.errors import ConfigError
from cachebrew.models.request import WEIGHT_DTYPES, attn_implementation_problems
from cachebrew.validation import (
    ConfigBase,
    check_bool,
    check_choice,
    check_int,
    load_config,
    raise_if_any,
    set_field,
)

__all__ = [
    "DEFAULT_FEATURES",  # from cache/format/reads, with with_feature_dtypes
    "PrecomputeConfig",
    "check_layers_exist",
    "load_precompute_config",
    "resolve_feature_spec",
    "with_feature_dtypes",
]


@dataclass(frozen=True)
class PrecomputeConfig(CorpusFields, ConfigBase):
    """Everything ``cachebrew precompute`` needs; YAML keys and CLI flags share these names.

    What to store comes from ``features`` (CLI form, e.g. ``logits,hidden:0,4,attention:4``),
    or is derived from the ``DistillationConfig`` YAML at ``distill_config`` (its kd loss and
    matches); without either, only ``logits`` are stored. ``dtype`` applies to every feature;
    ``feature_dtypes`` overrides it per kind, e.g. ``{"hidden": "int8", "attention": "fp16"}``.
    The corpus keys (``text_field``, ``label_field``, ...) are :class:`CorpusFields`.
    ``from_runs`` (``--from``): a run config or sweep file; what its runs read is stored too.

    How the teacher runs (issue 21): ``attn_implementation`` (``auto``: eager only when
    attention features are stored, else the best kernel), ``teacher_dtype`` (``auto``: bf16 on a
    CUDA device that has it when every stored feature is 16-bit, fp32 otherwise), ``device_map``
    (``auto`` or a module -> device mapping: accelerate's big-model placement), ``max_memory``
    (device -> limit for ``device_map: auto``) and ``offload_folder`` (weights placed on "disk").
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = (
        "teacher",
        "data",
        "out",
        "distill_config",
        "from_runs",
        "offload_folder",
    )

    teacher: str
    data: str
    out: str
    features: str | None = None
    distill_config: str | None = None
    from_runs: str | None = None
    dtype: str = "fp16"
    feature_dtypes: dict[str, str] | None = None
    codec: str = DEFAULT_CODEC
    topk: int | None = None  # alias of logits: topk:K
    logits: str | None = None  # dense | topk:K | sample:N[@T] | exact (cache/logits/sparse.py)
    task: str | None = None
    num_labels: int | None = None
    max_length: int | None = None  # None: 128, clipped to the teacher's positions
    batch_size: int = 32
    shard_size: int = 256
    device: str = "auto"
    overwrite: bool = False
    wait: bool = False
    attn_implementation: str = "auto"
    teacher_dtype: str = "auto"
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[str, Any] | None = None
    offload_folder: str | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("teacher", "data", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.append(f"{name}: expected a non-empty string, got {getattr(self, name)!r}")
        self.check_corpus_fields(problems)
        if self.features is not None and self.distill_config is not None:
            problems.append(
                "features and distill_config both given: choose one way to say what to store"
            )
        check_choice(problems, "dtype", self.dtype, DTYPES, "cache dtype")
        if isinstance(self.feature_dtypes, Mapping):
            for kind, dtype in self.feature_dtypes.items():
                check_choice(problems, f"feature_dtypes.{kind}", dtype, DTYPES, "cache dtype")
        elif self.feature_dtypes is not None:
            problems.append(
                f"feature_dtypes: expected a mapping of feature kind to dtype, e.g. "
                f"{{hidden: int8}}, got {self.feature_dtypes!r}"
            )
        if self.max_length is not None:
            set_field(self, "max_length", check_int(problems, "max_length", self.max_length, 2))
        for name, minimum in (("batch_size", 1), ("shard_size", 1)):
            set_field(self, name, check_int(problems, name, getattr(self, name), minimum))
        for name in ("topk", "num_labels"):
            if getattr(self, name) is not None:
                set_field(self, name, check_int(problems, name, getattr(self, name), 1))
        if self.logits is not None and self.topk is not None:
            problems.append("topk and logits both given: --topk K is --logits topk:K")
        elif self.logits is not None:  # checked here, before a teacher is loaded
            try:
                parse_logits_mode(self.logits)
            except ConfigError as error:
                problems += [f"logits: {p}" for p in error.problems]
        check_bool(problems, "overwrite", self.overwrite)
        check_bool(problems, "wait", self.wait)
        self._check_placement(problems)
        raise_if_any(problems)

    def _check_placement(self, problems: list[str]) -> None:
        problems += attn_implementation_problems(self.attn_implementation)
        check_choice(problems, "teacher_dtype", self.teacher_dtype, WEIGHT_DTYPES, "dtype")
        if self.device_map is not None and not (
            self.device_map == "auto" or isinstance(self.device_map, Mapping)
        ):
            problems.append(
                f"device_map: expected auto or a mapping of module name to device, got "
                f"{self.device_map!r}"
            )
        if self.max_memory is not None and not isinstance(self.max_memory, Mapping):
            problems.append(
                f"max_memory: expected a mapping of device to limit, e.g. {{0: 20GiB, cpu: "
                f"60GiB}}, got {self.max_memory!r}"
            )
        elif self.max_memory is not None and self.device_map != "auto":
            problems.append("max_memory: only used with device_map: auto; set device_map: auto")


def load_precompute_config(
    config_path: str | None, flags: Mapping[str, Any], overrides: Sequence[str] = ()
) -> PrecomputeConfig:
    """Merge a YAML file, CLI flags (those not None win) and ``--set`` overrides, then validate
    (:func:`~cachebrew.validation.load_config`)."""
    return load_config(PrecomputeConfig, config_path, flags, overrides)


def resolve_feature_spec(
    cfg: PrecomputeConfig,
    vocab_size: int | None,
    runs: Mapping[str, DistillationConfig] | None = None,
) -> FeatureSpec:
    """What to store (:func:`~cachebrew.cache.format.reads.features_to_store`): ``features``,
    what ``distill_config`` and the runs of ``from_runs`` read; only ``logits`` without them.

    ``runs``: the distillation configs of ``from_runs``'s runs, by label, as the command layer
    loads them (:func:`cachebrew.runner.reads.distill_configs_of`); needed iff ``from_runs``.

    Raises:
        ConfigError: ``from_runs`` without ``runs``; invalid matches; unknown feature dtypes.
    """
    if cfg.from_runs is not None and runs is None:
        raise ConfigError(
            f"from_runs {cfg.from_runs}: pass its runs too, "
            "runs=cachebrew.runner.reads.distill_configs_of(from_runs)"
        )
    distill = cfg.distill_config
    return features_to_store(
        features=cfg.features,
        distill=None if distill is None else DistillationConfig.from_yaml(distill),
        runs=runs if cfg.from_runs is not None else None,
        logits_mode=cfg.logits or (f"topk:{cfg.topk}" if cfg.topk else None),
        vocab_size=vocab_size,
        codec=cfg.codec,
        dtype=cfg.dtype,
        feature_dtypes=cfg.feature_dtypes,
    )


def check_layers_exist(spec: FeatureSpec, num_layers: int | None) -> None:
    """Refuse layers the teacher does not have, before any corpus is read or teacher run.

    ``hidden`` indices run 0..num_layers (0 = embeddings, as TextBrewer's adaptors);
    ``attention`` indices 0..num_layers - 1. Unknown depth (factory models) is checked later.
    """
    if num_layers is None:
        return
    problems = []
    for feature in spec:
        top = num_layers if feature.kind.startswith("hidden") else num_layers - 1
        bad = [layer for layer in feature.layers if layer > top]
        if bad:
            source = "hidden" if feature.kind.startswith("hidden") else "attention"
            problems.append(
                f"feature {feature.kind!r}: layers {bad} do not exist; the teacher gives "
                f"{top + 1} {source} layers (indices 0..{top})"
            )
    if problems:
        raise ConfigError(problems)
