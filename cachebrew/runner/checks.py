"""Check a distill run against its cache and student before step 1 (all problems at once).

What is checked:

- the features and layers the KD loss and matches need are stored (``CacheReader.require``;
  its message lists what the cache stores); skipped in online mode, where the teacher runs;
- each match's ``proj`` ``dim_T`` equals the stored teacher feature width and ``dim_S`` the
  student's hidden size; without ``proj``, losses that compare features element-wise
  (``hidden_mse``, ``cos``, ``pkd``, ``fsp``/``gram``) need equal widths;
- ``layer_S`` exists in the student (hidden states: embeddings + one per layer);
- the student's vocabulary covers every input id it will read (the cache's, or its own
  tokenization's);
- the student's label count equals the width of the cached logits (classification heads);
- a student with another tokenizer: no token-level matches or token-level logits (teacher
  features are aligned with the teacher's tokens, DESIGN §3);
- hard-label training, a KD loss that reads labels (``hard_label_weight`` > 0,
  ``probability_shift``) and held-out evaluation need labels in the cache;
- RUN_DIR is not the cache or inside it (:func:`check_out_dir`), and an online teacher is the
  cache's teacher (:func:`check_online_teacher`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cachebrew.cache import feature_spec_from_matches
from cachebrew.cache.read.reader import CacheReader
from cachebrew.config import DistillationConfig, IntermediateMatch
from cachebrew.errors import CacheMismatchError, ConfigError
from cachebrew.models import TOKEN_LEVEL_KINDS, LoadedModel
from cachebrew.runner.config import DistillRunConfig

logger = logging.getLogger(__name__)

SAME_WIDTH_LOSSES = frozenset({"hidden_mse", "cos", "pkd", "fsp", "gram"})
CLASSIFICATION_KINDS = ("sequence_classification", "token_classification")


def check_run(
    cfg: DistillRunConfig,
    reader: CacheReader,
    student: LoadedModel,
    *,
    student_items: Mapping[str, Mapping[str, Any]] | None = None,
    teacher_config: Any = None,
) -> None:
    """Raise one ConfigError listing every way the run does not fit the cache or student.

    Args:
        cfg: the run config.
        reader: the open cache.
        student: the loaded student.
        student_items: the student's own tokenization (``data:``, another tokenizer), or None
            when it reads the cache's input ids.
        teacher_config: the online teacher's HF config (widths come from it), or None.
    """
    problems: list[str] = []
    other_tokenizer = student_items is not None
    distill = cfg.distill_config
    if distill is not None:
        if teacher_config is None:
            problems += _feature_problems(reader, distill)
        problems += _match_problems(reader, distill, student, teacher_config)
        if other_tokenizer:
            problems += _tokenizer_problems(reader, distill)
    problems += _vocab_problems(reader, student, student_items)
    problems += _label_problems(cfg, reader, student)
    if problems:
        raise ConfigError(problems)


def _feature_problems(reader: CacheReader, distill: DistillationConfig) -> list[str]:
    scheduler = distill.temperature_scheduler
    kd_needed = distill.kd_loss_weight != 0 or distill.kd_loss_weight_scheduler != "none"
    try:
        spec = feature_spec_from_matches(
            distill.kd_loss_type if kd_needed else None,
            scheduler if isinstance(scheduler, str) else scheduler[0],
            [m.to_dict() for m in distill.intermediate_matches],
        )
        reader.require(spec)
    except (CacheMismatchError, ConfigError) as error:
        return [str(error)]
    return []


def _stored_width(reader: CacheReader, match: IntermediateMatch, layer: int) -> int | None:
    kind = "hidden_cls" if match.loss == "pkd" else "hidden"
    info = reader.manifest["arrays"].get(f"{kind}.{layer}")
    return None if info is None else int(info["width"])


def _match_problems(
    reader: CacheReader,
    distill: DistillationConfig,
    student: LoadedModel,
    teacher_config: Any,
) -> list[str]:
    config = getattr(student.model, "config", None)
    student_width = getattr(config, "hidden_size", None)
    num_layers = getattr(config, "num_hidden_layers", None)
    problems = []
    for i, match in enumerate(distill.intermediate_matches):
        where = f"distill.intermediate_matches[{i}]"
        layers_S = match.layer_S if isinstance(match.layer_S, tuple) else (match.layer_S,)
        layers_T = match.layer_T if isinstance(match.layer_T, tuple) else (match.layer_T,)
        if num_layers is not None:
            available = num_layers + 1 if match.feature == "hidden" else num_layers
            bad = [layer for layer in layers_S if layer >= available]
            if bad:
                problems.append(
                    f"{where}: layer_S {bad} out of range; the student gives {available} "
                    f"{match.feature} layers (0..{available - 1})"
                )
        if match.feature != "hidden":
            continue
        if teacher_config is not None:
            width_T = getattr(teacher_config, "hidden_size", None)
        else:
            width_T = _stored_width(reader, match, layers_T[0])
        problems += _width_problems(where, match, student_width, width_T)
    return problems


def _width_problems(
    where: str, match: IntermediateMatch, width_S: int | None, width_T: int | None
) -> list[str]:
    if match.proj is not None:
        _kind, dim_S, dim_T, _options = match.proj
        problems = []
        if width_T is not None and dim_T != width_T:
            problems.append(
                f"{where}.proj: dim_T={dim_T} but the teacher's hidden states have width {width_T}"
            )
        if width_S is not None and dim_S != width_S:
            problems.append(
                f"{where}.proj: dim_S={dim_S} but the student's hidden size is {width_S}"
            )
        return problems
    if match.loss in SAME_WIDTH_LOSSES and None not in (width_S, width_T) and width_S != width_T:
        return [
            f"{where}: loss {match.loss!r} compares student width {width_S} with teacher width "
            f"{width_T}; add proj: [linear, {width_S}, {width_T}]"
        ]
    return []


def _tokenizer_problems(reader: CacheReader, distill: DistillationConfig) -> list[str]:
    problems = [
        f"distill.intermediate_matches[{i}]: a {m.feature} match is token-aligned, but the "
        "student uses another tokenizer than the cache; use logit KD only, or a student with "
        "the teacher's tokenizer"
        for i, m in enumerate(distill.intermediate_matches)
        if m.loss != "pkd"
    ]
    if reader.manifest["teacher"].get("kind") in TOKEN_LEVEL_KINDS:
        problems.append(
            "the cached logits are per teacher token; a student with another tokenizer cannot "
            "be distilled on them (use the teacher's tokenizer)"
        )
    return problems


def _vocab_problems(
    reader: CacheReader,
    student: LoadedModel,
    student_items: Mapping[str, Mapping[str, Any]] | None,
) -> list[str]:
    vocab_size = getattr(getattr(student.model, "config", None), "vocab_size", None)
    if vocab_size is None:
        return []
    if student_items is None:
        largest, whose = max_input_id(reader), "the cache's input ids"
    else:
        ids = (max(item["input_ids"], default=-1) for item in student_items.values())
        largest, whose = max(ids, default=-1), "the ids of its own tokenizer"
    if largest >= vocab_size:
        return [
            f"student: vocab_size {vocab_size} does not cover {whose} (largest {largest}); "
            f"give the student vocab_size >= {largest + 1}"
        ]
    return []


def max_input_id(reader: CacheReader) -> int:
    """The largest teacher input id stored in the cache (reads every shard's index)."""
    import pyarrow.compute as pc

    largest = -1
    for k in range(reader.num_shards):
        values = reader.shard(k).table.column("input_ids").combine_chunks().flatten()
        if len(values):
            largest = max(largest, int(pc.max(values).as_py()))
    return largest


def _label_problems(cfg: DistillRunConfig, reader: CacheReader, student: LoadedModel) -> list[str]:
    problems = []
    label_type = reader.manifest.get("label_type")
    if cfg.distill_config is None and label_type is None:
        problems.append(
            "kd: hard-label training (no distill) needs labels, but the cache has none; "
            "precompute with --label-field"
        )
    elif cfg.distill_config is not None and label_type is None:
        problems += _kd_label_problems(cfg.distill_config)
    if cfg.eval is not None and cfg.eval.fraction is not None and label_type is None:
        problems.append("eval.fraction: the cache has no labels to evaluate against")
    if cfg.eval is not None and label_type in ("float", "float_list"):
        problems.append(f"eval: {label_type} labels (regression) have no metric yet")
    problems += _logit_width_problems(reader, student)
    return problems


def _kd_label_problems(distill: DistillationConfig) -> list[str]:
    """KD losses that read the labels, on a cache without them (they would be skipped silently)."""
    needs = []
    if distill.hard_label_weight != 0 or distill.hard_label_weight_scheduler != "none":
        needs.append(f"hard_label_weight={distill.hard_label_weight:g}")
    if distill.probability_shift:
        needs.append("probability_shift")
    if not needs:
        return []
    return [
        f"distill.{' and '.join(needs)} needs labels, but the cache has none: precompute it "
        "again with --label-field, or set hard_label_weight: 0 and probability_shift: false"
    ]


def _logit_width_problems(reader: CacheReader, student: LoadedModel) -> list[str]:
    logits = reader.manifest["arrays"].get("logits")
    num_labels = getattr(getattr(student.model, "config", None), "num_labels", None)
    if logits is None or num_labels is None or student.kind not in CLASSIFICATION_KINDS:
        return []
    if int(logits["width"]) != num_labels:
        return [
            f"student: {num_labels} labels but the cached teacher logits have "
            f"{logits['width']} classes; set num_labels: {logits['width']}"
        ]
    return []


def check_out_dir(cfg: DistillRunConfig) -> None:
    """Refuse a RUN_DIR equal to or inside the cache: the run would write into the cache.

    Raises:
        ConfigError: names both paths and the fix.
    """
    if "://" in cfg.cache and not cfg.cache.startswith("file://"):
        return  # an object store: a local RUN_DIR cannot be inside it
    cache = Path(cfg.cache.removeprefix("file://")).resolve()
    out = Path(cfg.out.removeprefix("file://")).resolve()
    if out == cache or cache in out.parents:
        where = "is" if out == cache else "is inside"
        raise ConfigError(
            f"out: {cfg.out} {where} the cache {cfg.cache}; distill would write checkpoints/, "
            "tb/, config.yaml and metrics.json into the cache: choose an out outside it"
        )


def check_online_teacher(
    cfg: DistillRunConfig, reader: CacheReader, teacher: LoadedModel, allow_mismatch: bool
) -> None:
    """Check the online teacher against the teacher identity the cache recorded, before step 1.

    A teacher whose vocabulary does not cover the cached input ids always fails (it would index
    past its embeddings); other differences (weights, config, tokenizer) fail unless
    ``allow_mismatch`` (``--allow-teacher-mismatch``), then they are logged.

    Raises:
        CacheMismatchError: names each field that differs, both values and the fix.
    """
    recorded = reader.manifest.get("teacher", {})
    differences = [
        f"{key} (cache {str(recorded.get(key))[:12]}, given {str(teacher.identity.get(key))[:12]})"
        for key in ("weights_sha256", "config_sha256", "tokenizer_sha256")
        if recorded.get(key) is not None and recorded.get(key) != teacher.identity.get(key)
    ]
    vocab_size = getattr(getattr(teacher.model, "config", None), "vocab_size", None)
    largest = max_input_id(reader) if vocab_size is not None else -1
    if vocab_size is not None and largest >= vocab_size:
        raise CacheMismatchError(
            f"teacher: {cfg.teacher} has vocab_size {vocab_size} but the cache {cfg.cache} holds "
            f"input id {largest}; give the teacher the cache was built with "
            f"({recorded.get('source')})"
        )
    if not differences:
        return
    text = ", ".join(differences)
    if allow_mismatch:
        logger.warning("teacher %s differs from the cache's teacher: %s", cfg.teacher, text)
        return
    raise CacheMismatchError(
        f"teacher: {cfg.teacher} is not the teacher the cache {cfg.cache} was built with "
        f"({recorded.get('source')}): {text} differ; give that teacher, or pass "
        "--allow-teacher-mismatch to train against this one anyway"
    )
