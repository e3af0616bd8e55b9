"""What one micro-batch computes, per distiller kind: forwards (under autocast), then the loss.

The loop calls ``objective.forward(...)`` inside the precision context and
``objective.loss(...)`` outside it, on outputs upcast to float32: models run in bf16/fp16,
losses and projections in fp32. The teacher forward, when one runs, is under
``torch.no_grad()``; cached batches skip it entirely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from cachebrew.distill.batches import (
    Adaptor,
    SplitBatch,
    adapt,
    forward,
    move_to_device,
    split_batch,
    upcast_floats,
)
from cachebrew.distill.loss import (
    DistillationLoss,
    LossOutput,
    LossWeights,
    combine_teachers,
    supervised_loss,
)
from cachebrew.errors import ConfigError

Forwarded = tuple[dict[str, Any], Any]  # (adapted student results, adapted teacher results)


class Objective(Protocol):
    """The per-micro-batch computation the loop drives."""

    def forward(
        self, model: nn.Module, batch: Any, task: str | None, args: Mapping[str, Any]
    ) -> Forwarded:
        """Run the models and adaptors on one batch."""
        ...

    def loss(
        self, forwarded: Forwarded, weights: LossWeights, projections: Mapping[str, nn.Module]
    ) -> LossOutput:
        """The micro-batch loss from :meth:`forward`'s outputs."""
        ...


class SupervisedObjective:
    """BasicTrainer: ``sum(losses.mean())`` from the adaptor; no teacher.

    Args:
        adaptor: ``(batch, model_outputs) -> {'losses': ...}``.
        device: where batches go.
    """

    def __init__(self, adaptor: Adaptor, device: torch.device):
        self.adaptor = adaptor
        self.device = device

    def forward(
        self, model: nn.Module, batch: Any, task: str | None, args: Mapping[str, Any]
    ) -> Forwarded:
        """Student forward and adaptor."""
        batch = move_to_device(batch, self.device)
        return adapt(self.adaptor, batch, forward(model, batch, args), "adaptor"), None

    def loss(
        self, forwarded: Forwarded, weights: LossWeights, projections: Mapping[str, nn.Module]
    ) -> LossOutput:
        """The summed ``losses``."""
        return supervised_loss(upcast_floats(forwarded[0]))


@dataclass
class TeacherSide:
    """The teacher(s) of one task.

    Attributes:
        models: the online teachers (empty or Nones when training from ``teacher_cache``).
        adaptors: one adaptor per teacher (None = identity, for cached outputs).
        multi: several teachers whose outputs are combined (MultiTeacherDistiller).
    """

    models: Sequence[nn.Module | None]
    adaptors: Sequence[Adaptor | None]
    multi: bool = False

    def results(self, split: SplitBatch, device: torch.device, args: Mapping[str, Any]) -> Any:
        """Adapted teacher outputs: a dict, or a list of dicts when ``multi``."""
        teacher_batch = move_to_device(split.teacher, device)
        if split.teacher_cache is not None:
            outputs = move_to_device(split.teacher_cache, device)
            if self.multi and isinstance(outputs, Mapping):
                outputs = [outputs]  # one pre-averaged teacher output
            elif not self.multi:
                outputs = [outputs]
        else:
            outputs = self._run_online(teacher_batch, args)
        adaptors = self._adaptors_for(len(outputs))
        cached = split.teacher_cache is not None
        results = [
            _adapt_teacher(adaptor, teacher_batch, output, cached)
            for adaptor, output in zip(adaptors, outputs, strict=True)
        ]
        return results if self.multi else results[0]

    def _adaptors_for(self, count: int) -> Sequence[Adaptor | None]:
        # One adaptor serves every teacher; a single (pre-averaged) output uses the first.
        if len(self.adaptors) == 1:
            return list(self.adaptors) * count
        if count in (1, len(self.adaptors)):
            return self.adaptors[:count]
        raise ConfigError(
            f"teacher_cache holds {count} teacher outputs for {len(self.adaptors)} teacher "
            "adaptors; give one output per teacher, or one pre-averaged output"
        )

    def _run_online(self, teacher_batch: Any, args: Mapping[str, Any]) -> list[Any]:
        models = [model for model in self.models if model is not None]
        if not models or len(models) < len(self.models):
            raise ConfigError(
                "model_T is None but the batch has no 'teacher_cache': either pass the teacher "
                "model or feed {'teacher': ..., 'student': ..., 'teacher_cache': ...} batches"
            )
        with torch.no_grad():
            return [forward(model, teacher_batch, args) for model in models]


def _adapt_teacher(adaptor: Adaptor | None, batch: Any, output: Any, cached: bool) -> Any:
    """``adapt`` for a teacher; a custom adaptor that fails on cached features gets a clear error.

    A cache holds *adapted* features (a dict with ``ADAPTOR_KEYS``), not the model's raw
    outputs, so a TextBrewer adaptor written for raw outputs (``outputs[1]``...) fails inside
    the user's code with a bare ``KeyError: 1``; say what happened and what to do instead.
    """
    if adaptor is None or not cached:
        return adapt(adaptor, batch, output, "adaptor_T")
    try:
        return adapt(adaptor, batch, output, "adaptor_T")
    except ConfigError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        keys = sorted(output) if isinstance(output, Mapping) else type(output).__name__
        raise ConfigError(
            f"adaptor_T failed on a teacher_cache batch ({type(error).__name__}: {error}): "
            f"with teacher_cache the adaptor receives the cached, already adapted features "
            f"(keys {keys}), not the teacher's raw outputs; pass adaptor_T=None (the identity) "
            "or write adaptor_T for that dict"
        ) from error


class DistillObjective:
    """Basic, General, MultiTeacher and MultiTask distillation.

    Args:
        teachers: task name (None for single-task) -> its teacher side.
        adaptors_S: task name -> student adaptor.
        loss_fn: the distillation loss.
        device: where batches go.
        combine: merges a list of teacher results (multi-teacher), or None.
    """

    def __init__(
        self,
        teachers: Mapping[str | None, TeacherSide],
        adaptors_S: Mapping[str | None, Adaptor],
        loss_fn: DistillationLoss,
        device: torch.device,
        combine: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    ):
        self.teachers = teachers
        self.adaptors_S = adaptors_S
        self.loss_fn = loss_fn
        self.device = device
        self.combine = combine

    def forward(
        self, model: nn.Module, batch: Any, task: str | None, args: Mapping[str, Any]
    ) -> Forwarded:
        """Teacher results (cache or no-grad forward), then the student forward."""
        split = split_batch(batch)
        results_T = self.teachers[task].results(split, self.device, args)
        student_batch = move_to_device(split.student, self.device)
        outputs_S = forward(model, student_batch, args)
        results_S = adapt(self.adaptors_S[task], student_batch, outputs_S, "adaptor_S")
        return results_S, results_T

    def loss(
        self, forwarded: Forwarded, weights: LossWeights, projections: Mapping[str, nn.Module]
    ) -> LossOutput:
        """The distillation loss in fp32."""
        results_S, results_T = upcast_floats(forwarded)
        if isinstance(results_T, list):
            assert self.combine is not None
            results_T = self.combine(results_T)
        return self.loss_fn(results_S, results_T, weights, projections)


def multi_teacher_combiner(
    teacher_weights: Sequence[float] | None, match_teacher: int
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """``combine`` for MultiTeacherDistiller (see :func:`combine_teachers`).

    A single pre-averaged cached output is used as is (weights were applied when caching).
    """

    def combine(results_T: list[dict[str, Any]]) -> dict[str, Any]:
        if len(results_T) == 1:
            return combine_teachers(results_T, None, 0)
        if teacher_weights is not None and len(teacher_weights) != len(results_T):
            raise ConfigError(
                f"teacher_weights has {len(teacher_weights)} entries for {len(results_T)} "
                "teacher outputs"
            )
        return combine_teachers(results_T, teacher_weights, match_teacher)

    return combine
