"""The sections of a run config: ``init_from_teacher``, ``optimizer``, ``schedule``, ``data``
and ``eval`` (:mod:`cachebrew.runner.config` holds the run itself, ``DistillRunConfig``).

Each section is a read-only dataclass validated at once, like the run (every problem reported
together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cachebrew.corpus.fields import CorpusFields
from cachebrew.metrics import METRICS, metrics_for_task
from cachebrew.validation import (
    ConfigBase,
    check_choice,
    check_int,
    check_real,
    is_int,
    is_real,
    raise_if_any,
    set_field,
)

SCHEDULES = ("linear", "constant", "cosine")


def check_str(problems: list[str], name: str, value: Any, optional: bool = True) -> None:
    """Record a problem unless ``value`` is a non-empty string (or None when ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        problems.append(f"{name}: expected a non-empty string, got {value!r}")


@dataclass(frozen=True)
class InitFromTeacher(ConfigBase):
    """Copy a BERT-family teacher's embeddings and ``layers`` (one per student layer)."""

    path: str
    layers: tuple[int, ...]

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_str(problems, "path", self.path, optional=False)
        values = self.layers
        if not isinstance(values, list | tuple) or not all(is_int(v) and v >= 0 for v in values):
            problems.append(f"layers: expected a list of layer indices >= 0, got {values!r}")
        else:
            set_field(self, "layers", tuple(int(v) for v in values))
        raise_if_any(problems)


@dataclass(frozen=True)
class OptimizerConfig(ConfigBase):
    """AdamW; no weight decay on biases and LayerNorm weights (as HF's Trainer)."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        problems: list[str] = []
        set_field(self, "lr", check_real(problems, "lr", self.lr, positive=True))
        set_field(self, "weight_decay", check_real(problems, "weight_decay", self.weight_decay))
        set_field(self, "eps", check_real(problems, "eps", self.eps, positive=True))
        betas = self.betas
        if isinstance(betas, list | tuple) and len(betas) == 2 and all(map(is_real, betas)):
            set_field(self, "betas", (float(betas[0]), float(betas[1])))
        else:
            problems.append(f"betas: expected two numbers like [0.9, 0.999], got {betas!r}")
        raise_if_any(problems)


@dataclass(frozen=True)
class ScheduleConfig(ConfigBase):
    """Learning rate: linear warmup over ``warmup_steps`` (or ``warmup_ratio`` of the steps),
    then ``linear`` decay to 0, ``cosine`` decay to 0, or ``constant``."""

    name: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_choice(problems, "name", self.name, SCHEDULES, "schedule")
        ratio = check_real(problems, "warmup_ratio", self.warmup_ratio)
        if is_real(ratio) and not 0 <= ratio < 1:
            problems.append(f"warmup_ratio: expected a number in [0, 1), got {ratio!r}")
        set_field(self, "warmup_ratio", ratio)
        if self.warmup_steps is not None:
            set_field(
                self, "warmup_steps", check_int(problems, "warmup_steps", self.warmup_steps, 0)
            )
        raise_if_any(problems)

    def warmup(self, total_steps: int) -> int:
        """Warmup steps for a run of ``total_steps`` optimizer steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_ratio * total_steps)


@dataclass(frozen=True)
class DataConfig(CorpusFields, ConfigBase):
    """The corpus the cache was built from, re-tokenized for a student with another tokenizer.

    Use the same file and corpus fields as ``precompute`` so the example ids match.
    """

    path: str

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_str(problems, "path", self.path, optional=False)
        self.check_corpus_fields(problems)
        raise_if_any(problems)


@dataclass(frozen=True)
class EvalConfig(CorpusFields, ConfigBase):
    """Evaluation after training: a held-out ``fraction`` of the cache's examples (chosen by a
    hash of the example id and ``seed``; they are not trained on), or a labelled corpus at
    ``data`` (read with the corpus fields; ``label_field`` defaults to ``label``) tokenized
    with the student's tokenizer.

    ``metrics`` lists the metrics to report (default: every metric that fits the task,
    :data:`~cachebrew.metrics.TASK_METRICS`); ``metric`` (one name, kept for older configs)
    is the first of them when ``metrics`` is not given. The first is the run's ``metric`` /
    ``value`` and what ``keep_checkpoints`` ranks by. ``every_steps: N`` also evaluates every
    N optimizer steps and at every checkpoint (TensorBoard ``eval/<metric>``, ``metrics.json``
    ``eval_curve``). ``outside_label`` is the ``O`` tag id for ``token_f1``.
    """

    data: str | None = None
    fraction: float | None = None
    metric: str | None = None
    metrics: tuple[str, ...] | None = None
    every_steps: int | None = None
    batch_size: int = 64
    seed: int = 0
    outside_label: int | None = None
    label_field: str | None = field(default="label", kw_only=True)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if (self.data is None) == (self.fraction is None):
            problems.append(
                "data or fraction: give exactly one (a labelled corpus, or a held-out share)"
            )
        check_str(problems, "data", self.data)
        if self.fraction is not None and not (is_real(self.fraction) and 0 < self.fraction < 1):
            problems.append(f"fraction: expected a number in (0, 1), got {self.fraction!r}")
        if self.metric is not None:
            check_choice(problems, "metric", self.metric, METRICS, "metric")
        self._check_metrics(problems)
        if self.every_steps is not None:
            set_field(self, "every_steps", check_int(problems, "every_steps", self.every_steps, 1))
        set_field(self, "batch_size", check_int(problems, "batch_size", self.batch_size, 1))
        set_field(self, "seed", check_int(problems, "seed", self.seed, 0))
        if self.outside_label is not None:
            check_int(problems, "outside_label", self.outside_label, 0)
        self.check_corpus_fields(problems)
        raise_if_any(problems)

    def _check_metrics(self, problems: list[str]) -> None:
        if self.metrics is None:
            return
        if isinstance(self.metrics, str):
            set_field(self, "metrics", tuple(m.strip() for m in self.metrics.split(",")))
        if not isinstance(self.metrics, list | tuple) or not self.metrics:
            problems.append(f"metrics: expected a non-empty list of names, got {self.metrics!r}")
            return
        for i, name in enumerate(self.metrics):
            check_choice(problems, f"metrics[{i}]", name, METRICS, "metric")
        set_field(self, "metrics", tuple(self.metrics))

    def metric_names(self, task: str) -> tuple[str, ...]:
        """What to report for a ``task`` student: ``metrics``, else ``(metric,)``, else every
        metric that fits the task (:func:`~cachebrew.metrics.metrics_for_task`)."""
        if self.metrics is not None:
            return self.metrics
        if self.metric is not None:
            return (self.metric,)
        return metrics_for_task(task) or ("accuracy",)
