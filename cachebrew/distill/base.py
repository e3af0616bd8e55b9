"""Shared machinery of the distiller façades: configs, modes, projections, hand-over to the loop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from cachebrew.config import DistillationConfig, TrainingConfig
from cachebrew.distill import runtime
from cachebrew.distill.loop import BatchSource, TrainingRun, TrainJob, run_training
from cachebrew.distill.loss import DistillationLoss
from cachebrew.distill.objectives import (
    DistillObjective,
    Objective,
    TeacherSide,
)
from cachebrew.distill.plan import TrainPlan
from cachebrew.distill.sources import SingleSource, num_batches
from cachebrew.distill.tracking import TrainObserver
from cachebrew.errors import ConfigError
from cachebrew.presets import PROJ_MAP

logger = logging.getLogger(__name__)


def build_projections(config: DistillationConfig) -> nn.ModuleDict:
    """One projection per match with ``proj``, keyed by the match index (TextBrewer init)."""
    modules: dict[str, nn.Module] = {}
    for index, match in enumerate(config.intermediate_matches):
        if match.proj is not None:
            kind, dim_S, dim_T, _options = match.proj
            modules[str(index)] = PROJ_MAP[kind](dim_S, dim_T)
    return nn.ModuleDict(modules)


def make_plan(
    config: TrainingConfig, dataloader: Iterable[Any], num_epochs: Any, num_steps: Any
) -> TrainPlan:
    """Step mode if ``num_steps`` is given (it wins, as TextBrewer), else epoch mode."""
    if num_steps is not None:
        return TrainPlan.for_steps(config, num_steps)
    if num_epochs is None:
        raise ConfigError("train(): give num_epochs or num_steps")
    return TrainPlan.for_epochs(config, num_batches(dataloader), num_epochs)


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list or tuple (as a list), else ``[value]``."""
    return list(value) if isinstance(value, list | tuple) else [value]


class Trainer:
    """Shared façade: TextBrewer's context manager and the hand-over to the loop."""

    #: optimizer steps between host transfers of the logged losses (see ``logger.py``).
    log_flush_steps = 20

    def __init__(self, train_config: TrainingConfig, model_S: nn.Module):
        if not isinstance(train_config, TrainingConfig):
            raise ConfigError(
                f"train_config must be a cachebrew TrainingConfig, got {type(train_config).__name__}"
            )
        self.t_config = train_config
        self.model_S = model_S
        self.projections = nn.ModuleDict()
        self.loss_history: list[dict[str, float]] = []
        self._modes = contextlib.ExitStack()

    def teacher_modules(self) -> list[nn.Module]:
        """The online teachers (none when training from a cache)."""
        return []

    def __enter__(self) -> Trainer:
        """Student in train mode, teachers in eval mode (restored on exit); returns self."""
        self._modes.enter_context(runtime.training_modes(self.model_S, self.teacher_modules()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._modes.close()

    def _objective(self) -> Objective:
        raise NotImplementedError

    def make_job(
        self,
        optimizer: torch.optim.Optimizer,
        source: BatchSource,
        plan: TrainPlan,
        **options: Any,
    ) -> TrainJob:
        """A :class:`~cachebrew.distill.loop.TrainJob` for this trainer's models and loss.

        The typed entry for callers that plan the run themselves (``cachebrew distill`` does):
        build the plan once with :func:`make_plan`, pass ``lr_schedule=`` and ``observer=``
        among ``options`` (any other ``TrainJob`` field), then :meth:`run_job`.
        """
        return TrainJob(
            objective=self._objective(),
            student=self.model_S,
            projections=self.projections,
            teachers=self.teacher_modules(),
            train_config=self.t_config,
            distill_config=getattr(self, "d_config", None),
            optimizer=optimizer,
            source=source,
            plan=plan,
            log_flush_steps=self.log_flush_steps,
            **options,
        )

    def run_job(self, job: TrainJob, resume_from: str | None = None) -> TrainingRun:
        """Train ``job`` (optionally resuming); sets :attr:`loss_history`; returns the run."""
        run = run_training(job, resume_from)
        self.loss_history = run.metrics.history
        return run

    def train(
        self,
        optimizer: torch.optim.Optimizer,
        dataloader: Iterable[Any],
        num_epochs: int | None = None,
        scheduler_class: Callable[..., Any] | None = None,
        scheduler_args: Mapping[str, Any] | None = None,
        scheduler: Any = None,
        max_grad_norm: float = -1.0,
        num_steps: int | None = None,
        callback: Callable[..., Any] | None = None,
        batch_postprocessor: Callable[[Any], Any] | None = None,
        resume_from: str | None = None,
        observer: TrainObserver | None = None,
        **args: Any,
    ) -> None:
        """Train the student.

        Args:
            optimizer: optimizer over the student's parameters; projection param groups are
                added on the first call (``proj[3]`` options), never twice.
            dataloader: iterable of batches (tuple, Mapping, or teacher/student/teacher_cache).
            num_epochs: epochs to train (needs ``len(dataloader)``).
            scheduler_class: LR scheduler class, built as
                ``scheduler_class(optimizer=optimizer, **scheduler_args)`` after the projection
                groups are added; ``scheduler_args=None`` means ``{}``.
            scheduler_args: keyword arguments of ``scheduler_class``.
            scheduler: deprecated pre-built scheduler (does not cover projection groups).
            max_grad_norm: clip the student's and projections' gradient norm (<= 0: no clip).
            num_steps: optimizer steps to train; wins over ``num_epochs``; cycles the data.
            callback: ``callback(model=student, step=global_step)`` after each checkpoint, on
                rank 0, with the unwrapped student, which is put back in train mode after.
            batch_postprocessor: ``fn(batch) -> batch`` applied first to every batch.
            resume_from: checkpoint directory, or ``'latest'`` in ``output_dir``.
            observer: receives progress (:class:`~cachebrew.distill.tracking.TrainObserver`).
            **args: extra keyword arguments for the model forwards.

        Raises:
            ConfigError: invalid arguments, adaptor keys, or a missing teacher.
        """
        job = self.make_job(
            optimizer,
            SingleSource(dataloader),
            make_plan(self.t_config, dataloader, num_epochs, num_steps),
            scheduler_class=scheduler_class,
            scheduler_args=scheduler_args,
            scheduler=scheduler,
            max_grad_norm=max_grad_norm,
            callback=callback,
            postprocess=single_postprocess(batch_postprocessor),
            forward_args=args,
            observer=observer,
        )
        self.run_job(job, resume_from)


def single_postprocess(fn: Callable[[Any], Any] | None) -> Callable[[Any, str | None], Any]:
    """``batch_postprocessor`` in the loop's ``(batch, task)`` form (identity for None)."""
    return (lambda batch, task: batch) if fn is None else (lambda batch, task: fn(batch))


class Distiller(Trainer):
    """State shared by the distillers: configs, models, adaptors, projections."""

    use_matches = True
    require_logits = False

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: Any,
        model_S: nn.Module,
        adaptor_T: Any,
        adaptor_S: Any,
    ):
        super().__init__(train_config, model_S)
        if not isinstance(distill_config, DistillationConfig):
            raise ConfigError(
                "distill_config must be a cachebrew DistillationConfig, got "
                f"{type(distill_config).__name__}"
            )
        self.d_config = distill_config
        self.model_T = model_T
        self.adaptor_T = adaptor_T
        self.adaptor_S = adaptor_S
        if distill_config.is_caching_logits:
            logger.warning(
                "is_caching_logits is ignored: the teacher runs on every batch. For the same "
                "saving and more, precompute a teacher cache and feed 'teacher_cache' batches"
            )
        if self.use_matches:
            self.projections = build_projections(distill_config)
        elif distill_config.intermediate_matches:
            logger.warning(
                "%s ignores intermediate_matches; use GeneralDistiller", type(self).__name__
            )

    @property
    def projs(self) -> list[nn.Module | None]:
        """TextBrewer's per-match projection list (None where a match has no ``proj``)."""
        matches = self.d_config.intermediate_matches
        return [
            self.projections[str(i)] if str(i) in self.projections else None
            for i in range(len(matches))
        ]

    def teacher_modules(self) -> list[nn.Module]:
        """Every online teacher model."""
        models = (
            self.model_T.values() if isinstance(self.model_T, Mapping) else as_list(self.model_T)
        )
        return [m for m in models if isinstance(m, nn.Module)]

    def _loss_fn(self) -> DistillationLoss:
        return DistillationLoss(self.d_config, self.use_matches, self.require_logits)

    def _objective(self) -> DistillObjective:
        teacher = TeacherSide(
            models=as_list(self.model_T) if self.model_T is not None else [],
            adaptors=[self.adaptor_T],
        )
        return DistillObjective(
            {None: teacher},
            {None: self.adaptor_S},
            self._loss_fn(),
            self.t_config.resolved_device(),
        )
