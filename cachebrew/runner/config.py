"""What one ``cachebrew distill`` run is: the YAML schema, validated at once, read-only.

A run config is one mapping (YAML file, CLI flags, ``--set`` overrides, in increasing
priority)::

    cache: caches/sst                 # the teacher cache (required)
    student: students/bert-2l.json    # HF config JSON (fresh, seeded), HF dir, module:function
    out: runs/bert-2l                 # RUN_DIR: checkpoints/, tb/, config.yaml, metrics.json
    teacher: null                     # a live teacher on the cached inputs (online mode)
    allow_teacher_mismatch: false     # train online against a teacher the cache was not built with
    init_from_teacher: {path: teacher_dir, layers: [0, 2]}
    kd: true                          # false = hard labels only (BasicTrainer)
    distill: {temperature: 8, ...}    # DistillationConfig fields; null = hard labels only
    training: {seed: 0, ...}          # TrainingConfig fields except output_dir/log_dir
    optimizer: {lr: 5.0e-5, weight_decay: 0.01}            # AdamW
    schedule: {name: linear, warmup_ratio: 0.1}            # linear | constant | cosine
    num_epochs: 3                     # or num_steps (exactly one; default 3 epochs)
    batch_size: 32
    max_grad_norm: 1.0
    eval: {fraction: 0.1}             # or {data: dev.jsonl, label_field: label, metrics: [...]}
                                      #   every_steps: N also evaluates during training
    keep_checkpoints: 2               # the latest + the best by the eval metric (else N latest)
    data: corpus.jsonl                # only for a student with another tokenizer
    tokenizer: null                   # the student's tokenizer (default: see the runner)
    attn_implementation: auto         # the student's kernel: auto | eager | sdpa | flash_attention_2

The student is asked only for what the run reads: hidden states when a match reads ``hidden``,
attention maps (and then eager attention) when one reads ``attention``; ``auto`` picks the best
kernel otherwise (:mod:`cachebrew.models.request`). ``training.gradient_checkpointing: true``
recomputes its activations in backward.

Relative paths written in the file (``cache``, ``student``, ``out``, ``teacher``,
``tokenizer``, ``init_from_teacher.path``, ``eval.data``, ``data``) are relative to the file's
folder; CLI flags and ``--set`` values to the working directory. ``student``, ``teacher`` and
``tokenizer`` of the ``module:function`` form are not paths. Omitting ``distill`` means KD with
:class:`~cachebrew.config.DistillationConfig`'s defaults (temperature 4, ``ce``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cachebrew.config import DistillationConfig, TrainingConfig
from cachebrew.errors import ConfigError
from cachebrew.models.request import attn_implementation_problems
from cachebrew.runner.sections import (
    DataConfig,
    EvalConfig,
    InitFromTeacher,
    OptimizerConfig,
    ScheduleConfig,
    check_str,
)
from cachebrew.validation import (
    ConfigBase,
    check_bool,
    check_choice,
    check_int,
    check_real,
    load_config,
    raise_if_any,
    resolve_paths,
    set_field,
)

TASKS = ("sequence_classification", "token_classification", "masked_lm", "causal_lm")
RUNNER_OWNED = ("output_dir", "log_dir")  # TrainingConfig fields the runner sets under RUN_DIR
DEFAULT_EPOCHS = 3
DEFAULT_SEED = 0


# field -> config class of the nested mappings; None keeps the default for the first three
_NESTED: dict[str, type[Any]] = {
    "training": TrainingConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "distill": DistillationConfig,
    "init_from_teacher": InitFromTeacher,
    "eval": EvalConfig,
    "data": DataConfig,
}


_DEFAULT_WHEN_NULL = ("training", "optimizer", "schedule")


def _nested(problems: list[str], name: str, value: Any) -> Any:
    """``value`` built into its config class; problems are prefixed with ``name``."""
    cls = _NESTED[name]
    if value is None:
        return cls() if name in _DEFAULT_WHEN_NULL else None
    if isinstance(value, cls):
        return value
    if name == "data" and isinstance(value, str):
        value = {"path": value}
    if name == "training" and isinstance(value, Mapping):
        for key in RUNNER_OWNED:
            if key in value:
                problems.append(
                    f"training.{key}: set by the runner under out (RUN_DIR/checkpoints, "
                    "RUN_DIR/tb); remove it"
                )
        value = {k: v for k, v in value.items() if k not in RUNNER_OWNED}
    try:
        return cls._from_mapping(value, name)
    except ConfigError as error:
        problems.extend(error.problems)
        return value


@dataclass(frozen=True)
class DistillRunConfig(ConfigBase):
    """One student run over one cache (the module docstring shows every key).

    Raises:
        ConfigError: every problem at once: unknown keys (with a suggestion), bad values,
            bad nested ``distill``/``training``/``optimizer``/``schedule``/``eval`` fields.
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = (
        "cache",
        "student",
        "out",
        "teacher",
        "tokenizer",
        "init_from_teacher.path",
        "eval.data",
        "data",
        "data.path",
    )

    cache: str
    student: str
    out: str
    teacher: str | None = None
    allow_teacher_mismatch: bool = False
    task: str | None = None
    num_labels: int | None = None
    tokenizer: str | None = None
    init_from_teacher: InitFromTeacher | None = None
    kd: bool = True
    distill: DistillationConfig | None = field(default_factory=DistillationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    num_epochs: int | None = None
    num_steps: int | None = None
    batch_size: int = 32
    max_grad_norm: float = 1.0
    shuffle_buffer: int = 1024
    keep_checkpoints: int = 2
    eval: EvalConfig | None = None
    data: DataConfig | None = None
    attn_implementation: str = "auto"

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("cache", "student", "out"):
            check_str(problems, name, getattr(self, name), optional=False)
        for name in ("teacher", "tokenizer"):
            check_str(problems, name, getattr(self, name))
        if self.task is not None:
            check_choice(problems, "task", self.task, TASKS, "task")
        check_bool(problems, "kd", self.kd)
        check_bool(problems, "allow_teacher_mismatch", self.allow_teacher_mismatch)
        problems += attn_implementation_problems(self.attn_implementation)
        for name in _NESTED:
            set_field(self, name, _nested(problems, name, getattr(self, name)))
        self._check_numbers(problems)
        raise_if_any(problems)

    def _check_numbers(self, problems: list[str]) -> None:
        if self.num_epochs is not None and self.num_steps is not None:
            problems.append(
                f"num_epochs ({self.num_epochs}) and num_steps ({self.num_steps}) both given; "
                "choose one"
            )
        for name in ("num_epochs", "num_steps", "num_labels"):
            if getattr(self, name) is not None:
                set_field(self, name, check_int(problems, name, getattr(self, name), 1))
        if self.num_epochs is None and self.num_steps is None:
            set_field(self, "num_epochs", DEFAULT_EPOCHS)
        for name in ("batch_size", "shuffle_buffer", "keep_checkpoints"):
            set_field(self, name, check_int(problems, name, getattr(self, name), 1))
        set_field(self, "max_grad_norm", check_real(problems, "max_grad_norm", self.max_grad_norm))

    @property
    def distill_config(self) -> DistillationConfig | None:
        """The distillation config, or None for hard-label training (``kd: false`` or null)."""
        return self.distill if self.kd else None

    @property
    def run_dir(self) -> Path:
        """RUN_DIR (``out``)."""
        return Path(self.out)

    def train_config(self) -> TrainingConfig:
        """``training`` with ``output_dir``/``log_dir`` under RUN_DIR and a seed (default 0)."""
        seed = DEFAULT_SEED if self.training.seed is None else self.training.seed
        return dataclasses.replace(
            self.training,
            output_dir=str(self.run_dir / "checkpoints"),
            log_dir=str(self.run_dir / "tb"),
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data; ``from_dict(cfg.to_dict()) == cfg``."""
        data = super().to_dict()
        data["training"] = {k: v for k, v in data["training"].items() if k not in RUNNER_OWNED}
        return data

    def to_portable_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with relative paths made absolute (against the working directory):
        what ``RUN_DIR/config.yaml`` holds, so it loads the same from any folder."""
        return resolve_paths(self.to_dict(), self.PATH_FIELDS, os.getcwd())


_REQUIRED_HINT = " (give them in the YAML or as --cache / --student / --out)"


def load_distill_config(
    config_path: str | None, flags: Mapping[str, Any], overrides: Sequence[str] = ()
) -> DistillRunConfig:
    """Merge a YAML file, CLI flags (those not None win) and ``--set`` overrides, then validate
    (:func:`~cachebrew.validation.load_config`).

    Raises:
        ConfigError: every problem of the merged config at once.
    """
    overrides = run_length_overrides(overrides)
    return load_config(DistillRunConfig, config_path, flags, overrides, missing_hint=_REQUIRED_HINT)


_RUN_LENGTH_KEYS = ("num_epochs", "num_steps")


def run_length_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` where setting one of ``num_epochs``/``num_steps`` replaces the other: a
    ``--set num_steps=N`` on a config that says ``num_epochs`` (as every ``config.yaml`` a run
    writes does) means "train N steps", not "both given"."""
    keys = {item.partition("=")[0].strip() for item in overrides}
    cleared = [f"{other}=null" for key, other in (_RUN_LENGTH_KEYS, _RUN_LENGTH_KEYS[::-1])
               if key in keys and other not in keys]  # fmt: skip
    return [*cleared, *overrides]
