"""What a ``cachebrew finetune`` run is and what it reports: its config and its summary.

:class:`FinetuneConfig` is the YAML/CLI schema (validated at once, read-only);
:class:`FinetuneSummary` is the record of a run, written to ``finetune_metrics.json`` after
every epoch and at the end. The training itself is :mod:`cachebrew.teacher.finetune`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cachebrew.corpus.fields import CorpusFields
from cachebrew.files import write_json_atomic
from cachebrew.metrics import TASK_METRICS, metrics_for_task
from cachebrew.validation import (
    ConfigBase,
    check_bool,
    check_choice,
    check_int,
    check_real,
    load_config,
    raise_if_any,
    set_field,
)

TASKS = tuple(TASK_METRICS)
# task -> (default text field, default label field); a causal LM learns its own tokens (no
# label column). The metric that picks the best epoch defaults to the task's first in the one
# task -> metrics table, :data:`cachebrew.metrics.TASK_METRICS` (for a causal LM: perplexity).
TASK_DEFAULTS: dict[str, tuple[str, str | None]] = {
    "sequence_classification": ("text", "label"),
    "token_classification": ("tokens", "tags"),
    "causal_lm": ("text", None),
}
METRICS_FILE = "finetune_metrics.json"


@dataclass(frozen=True)
class FinetuneConfig(CorpusFields, ConfigBase):
    """Everything ``cachebrew finetune`` needs; YAML keys and CLI flags share these names.

    ``text_field`` / ``label_field`` / ``metric`` default by task (``text``/``label``/
    ``accuracy`` for sequences, ``tokens``/``tags``/``token_f1`` for tagging; the metric is
    one of the task's in :data:`~cachebrew.metrics.TASK_METRICS`); the
    other corpus keys (``text_pair_field``, ``id_field``, ``split``) are :class:`CorpusFields`'.
    ``label_names`` is a JSON list file; by default ``label_names.json`` beside ``train`` when
    present. ``tokenizer``: a ``tokenizer.json`` (or its directory) for a ``model`` that has
    none beside it, e.g. an HF config JSON (fresh weights) of a causal LM trained from scratch;
    it is saved with the model. ``max_train_examples`` / ``max_dev_examples`` take a seeded random subset.
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = (
        "model",
        "train",
        "dev",
        "out",
        "label_names",
        "tokenizer",
    )

    model: str
    train: str
    dev: str
    out: str
    task: str = "sequence_classification"
    text_field: str | None = field(default=None, kw_only=True)  # None: the task's default
    label_names: str | None = None
    tokenizer: str | None = None
    num_labels: int | None = None
    epochs: int = 3
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    patience: int = 2
    metric: str | None = None
    max_train_examples: int | None = None
    max_dev_examples: int | None = None
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("model", "train", "dev", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.append(f"{name}: expected a non-empty string, got {getattr(self, name)!r}")
        check_choice(problems, "task", self.task, TASKS, "task")
        for name, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("eval_batch_size", 1),
            ("max_length", 2),
            ("patience", 1),
            ("seed", 0),
        ):
            set_field(self, name, check_int(problems, name, getattr(self, name), minimum))
        for name in ("num_labels", "max_train_examples", "max_dev_examples"):
            if getattr(self, name) is not None:
                set_field(self, name, check_int(problems, name, getattr(self, name), 1))
        for name in ("lr", "weight_decay", "warmup_ratio"):
            value = check_real(problems, name, getattr(self, name))
            if isinstance(value, float) and value < 0:
                problems.append(f"{name}: expected a number >= 0, got {value!r}")
            set_field(self, name, value)
        if isinstance(self.warmup_ratio, float) and self.warmup_ratio > 1:
            problems.append(f"warmup_ratio: expected a fraction in [0, 1], got {self.warmup_ratio}")
        if self.task in TASK_DEFAULTS:
            text, label = TASK_DEFAULTS[self.task]
            names = metrics_for_task(self.task)
            set_field(self, "text_field", self.text_field or text)
            set_field(self, "label_field", None if label is None else self.label_field or label)
            set_field(self, "metric", self.metric or names[0])
            check_choice(problems, "metric", self.metric, names, "metric")
            self.check_corpus_fields(problems)
        check_bool(problems, "overwrite", self.overwrite)
        raise_if_any(problems)


def load_finetune_config(
    config_path: str | None, flags: Mapping[str, Any], overrides: Sequence[str] = ()
) -> FinetuneConfig:
    """Merge a YAML file, CLI flags (those not None win) and ``--set`` overrides, then validate
    (:func:`~cachebrew.validation.load_config`)."""
    return load_config(FinetuneConfig, config_path, flags, overrides)


@dataclass
class FinetuneSummary:
    """What a fine-tuning run did (also written to ``finetune_metrics.json``)."""

    out: str
    task: str
    metric: str
    label_names: list[str]
    num_train: int
    num_dev: int
    num_parameters: int
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0

    @property
    def best(self) -> dict[str, float]:
        """The dev metrics of the best epoch."""
        return self.epochs[self.best_epoch - 1]["dev"] if self.best_epoch else {}

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "best": self.best}


def write_metrics(out: Path, cfg: FinetuneConfig, summary: FinetuneSummary, finished: bool) -> None:
    """Write ``out/finetune_metrics.json`` (atomically: it is rewritten after every epoch)."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": cfg.to_dict(), **summary.to_dict(), "finished": finished}
    write_json_atomic(out / METRICS_FILE, record, indent=1)


def describe_summary(summary: FinetuneSummary) -> str:
    """One line for the end of a run."""
    best = ", ".join(f"{k} {v:.4f}" for k, v in summary.best.items())
    stopped = ", stopped early" if summary.stopped_early else ""
    return (
        f"{summary.task} model saved to {summary.out}: best epoch {summary.best_epoch} of "
        f"{len(summary.epochs)} (dev {best}), {summary.num_train} train / {summary.num_dev} dev "
        f"examples, {summary.train_seconds:.1f} s{stopped}"
    )
