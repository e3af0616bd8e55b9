"""TextBrewer's distiller classes as thin façades over the one loop.

Usage is TextBrewer's::

    distiller = GeneralDistiller(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
    with distiller:
        distiller.train(optimizer, dataloader, num_epochs=3,
                        scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={'num_warmup_steps': 10, 'num_training_steps': 300})

Training from a teacher cache: ``model_T=None``, ``adaptor_T=None`` and batches
``{'teacher': ..., 'student': ..., 'teacher_cache': {adaptor keys: tensors}}``.

Each ``train()`` accepts TextBrewer's arguments plus ``resume_from`` (a checkpoint directory,
or ``'latest'``) and ``observer`` (a :class:`~cachebrew.distill.tracking.TrainObserver` that
receives every micro-batch and optimizer step). After a call, ``distiller.loss_history`` holds one dict of losses per
optimizer step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cachebrew.config import DistillationConfig, TrainingConfig
from cachebrew.distill.base import (
    Distiller,
    Trainer,
    as_list,
    make_plan,
)
from cachebrew.distill.batches import Adaptor
from cachebrew.distill.loss import normalise_teacher_weights
from cachebrew.distill.objectives import (
    DistillObjective,
    SupervisedObjective,
    TeacherSide,
    multi_teacher_combiner,
)
from cachebrew.distill.sources import MultiTaskSource
from cachebrew.distill.tracking import TrainObserver
from cachebrew.errors import ConfigError

logger = logging.getLogger(__name__)


class BasicTrainer(Trainer):
    """Supervised training (no teacher): the loss is ``sum(losses.mean())`` from the adaptor.

    Args:
        train_config: training configuration.
        model: the model to train.
        adaptor: ``(batch, model_outputs) -> {'losses': ...}``; no ``'losses'`` is a ConfigError.
    """

    def __init__(self, train_config: TrainingConfig, model: nn.Module, adaptor: Adaptor):
        super().__init__(train_config, model)
        self.model = model
        self.adaptor = adaptor

    def _objective(self) -> SupervisedObjective:
        return SupervisedObjective(self.adaptor, self.t_config.resolved_device())


class BasicDistiller(Distiller):
    """Single teacher, KD on logits plus hard labels; ignores ``intermediate_matches``.

    Args:
        train_config: training configuration.
        distill_config: distillation configuration.
        model_T: teacher model, or None when every batch has a ``teacher_cache``.
        model_S: student model.
        adaptor_T: teacher adaptor (None: identity, for cached adapted outputs).
        adaptor_S: student adaptor.
    """

    use_matches = False
    require_logits = True


class GeneralDistiller(Distiller):
    """Single teacher with intermediate feature matches (TextBrewer's recommended distiller).

    Args: as :class:`BasicDistiller`, plus ``custom_matches``, which must be empty (TextBrewer's
    implementation always failed with ``KeyError: 'match_weghts'``).
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: Any,
        model_S: nn.Module,
        adaptor_T: Any,
        adaptor_S: Any,
        custom_matches: Sequence[Any] | None = None,
    ):
        if custom_matches:
            raise ConfigError(
                "custom_matches are not supported (TextBrewer's never worked); express the "
                "match with intermediate_matches and an adaptor returning the feature"
            )
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)


class MultiTeacherDistiller(Distiller):
    """Several teachers of one task; KD against their (weighted) mean logits.

    Args:
        train_config, distill_config, model_S, adaptor_S: as :class:`GeneralDistiller`.
        model_T: list of teachers, or None when batches carry a ``teacher_cache`` that is a
            list of per-teacher outputs (or a single pre-averaged output).
        adaptor_T: one adaptor for all teachers or a list (None: identity).
        teacher_weights: optional per-teacher weights, normalised to sum to 1.
        match_teacher: the teacher intermediate matches are computed against.
    """

    require_logits = True

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: Sequence[nn.Module] | None,
        model_S: nn.Module,
        adaptor_T: Any,
        adaptor_S: Adaptor,
        teacher_weights: Sequence[float] | None = None,
        match_teacher: int = 0,
    ):
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        adaptors = as_list(adaptor_T)
        if model_T is not None and len(adaptors) not in (1, len(model_T)):
            raise ConfigError(f"adaptor_T: {len(adaptors)} adaptors for {len(model_T)} teachers")
        count = len(model_T) if model_T is not None else len(teacher_weights or adaptors)
        self.teacher_weights = normalise_teacher_weights(teacher_weights, count)
        self.match_teacher = match_teacher

    def _objective(self) -> DistillObjective:
        models = list(self.model_T) if self.model_T is not None else []
        teacher = TeacherSide(models=models, adaptors=as_list(self.adaptor_T), multi=True)
        combine = multi_teacher_combiner(self.teacher_weights, self.match_teacher)
        return DistillObjective(
            {None: teacher},
            {None: self.adaptor_S},
            self._loss_fn(),
            self.t_config.resolved_device(),
            combine,
        )


class MultiTaskDistiller(Distiller):
    """Several tasks, one teacher each, one student; a task is sampled per micro-batch.

    Args:
        train_config, distill_config, model_S: as :class:`GeneralDistiller`.
        model_T: task name -> teacher, or None (or None values) for tasks trained from
            ``teacher_cache`` batches.
        adaptor_T: task name -> teacher adaptor, or None (identity for every task).
        adaptor_S: task name -> student adaptor; its keys are the task names.
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: Mapping[str, nn.Module | None] | None,
        model_S: nn.Module,
        adaptor_T: Mapping[str, Adaptor | None] | None,
        adaptor_S: Mapping[str, Adaptor],
    ):
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        if not isinstance(adaptor_S, Mapping) or not adaptor_S:
            raise ConfigError("adaptor_S: expected a dict task name -> adaptor")
        for name, value in (("model_T", model_T), ("adaptor_T", adaptor_T)):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a dict task name -> value, or None")
            extra = set(value or {}) - set(adaptor_S)
            if extra:
                raise ConfigError(f"{name} has tasks {sorted(extra)} that adaptor_S lacks")

    def _objective(self) -> DistillObjective:
        models = self.model_T or {}
        adaptors = self.adaptor_T or {}
        teachers = {
            task: TeacherSide(
                models=[models[task]] if models.get(task) is not None else [],
                adaptors=[adaptors.get(task)],
            )
            for task in self.adaptor_S
        }
        return DistillObjective(
            teachers, dict(self.adaptor_S), self._loss_fn(), self.t_config.resolved_device()
        )

    def train(  # type: ignore[override]
        self,
        optimizer: torch.optim.Optimizer,
        dataloaders: Mapping[str, Iterable[Any]],
        num_steps: int,
        scheduler_class: Callable[..., Any] | None = None,
        scheduler_args: Mapping[str, Any] | None = None,
        scheduler: Any = None,
        max_grad_norm: float = -1.0,
        tau: float = 1,
        callback: Callable[..., Any] | None = None,
        batch_postprocessors: Mapping[str, Callable[[Any], Any]] | None = None,
        size: str = "examples",
        resume_from: str | None = None,
        observer: TrainObserver | None = None,
        **args: Any,
    ) -> None:
        """Train for ``num_steps`` optimizer steps over the tasks' dataloaders.

        Args:
            dataloaders: task name -> dataloader (each cycled).
            num_steps: optimizer steps.
            tau: task ``d`` is drawn with probability proportional to ``size_d ** tau``.
            batch_postprocessors: task name -> ``fn(batch) -> batch``.
            size: ``'examples'`` (``len(dl.dataset)``) or ``'batches'`` (``len(dl)``).
            others: as :meth:`GeneralDistiller.train`.
        """
        unknown = set(dataloaders) - set(self.adaptor_S)
        if unknown:
            raise ConfigError(f"dataloaders has tasks {sorted(unknown)} without an adaptor_S")
        processors = dict(batch_postprocessors or {})

        def postprocess(batch: Any, task: str | None) -> Any:
            processor = processors.get(task) if task is not None else None
            return processor(batch) if processor is not None else batch

        job = self.make_job(
            optimizer,
            MultiTaskSource(dataloaders, tau, size, self.t_config.seed),
            make_plan(self.t_config, dataloaders.values(), None, num_steps),
            scheduler_class=scheduler_class,
            scheduler_args=scheduler_args,
            scheduler=scheduler,
            max_grad_norm=max_grad_norm,
            callback=callback,
            postprocess=postprocess,
            forward_args=args,
            observer=observer,
        )
        self.run_job(job, resume_from)
