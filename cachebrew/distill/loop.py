"""The one training loop behind every distiller: setup -> train -> save_checkpoint -> cleanup.

One optimizer step = ``gradient_accumulation_steps`` micro-batches, each: postprocess the
batch, forwards under autocast, loss in fp32, ``(loss / GA).backward()``. Then clip (student
*and* projections; the student only under ``textbrewer_compat``), ``optimizer.step()``,
``scheduler.step()``, ``zero_grad()``, log, and save + callback when the plan says so. This is TextBrewer's ``train_with_num_steps`` /
``train_with_num_epochs`` / ``MultiTaskDistiller.train`` merged, with these decisions:

- **Epoch mode** runs ``len(dataloader) // GA`` steps per epoch (TextBrewer's count). The
  ``len % GA`` leftover micro-batches at the end of an epoch are not read: TextBrewer ran them
  and then discarded their gradients with ``zero_grad()`` at the next epoch start, so the
  weights are the same and the compute is saved (only their log points are gone; with dropout
  the later random draws differ, so ``textbrewer_compat`` runs their forwards).
- **Step mode** cycles the dataloader (accumulation groups may straddle passes, as in
  TextBrewer), calls ``set_epoch(pass)`` on each new pass, and saves every ``ckpt_steps``
  steps if set, and always at the end (TextBrewer required ``ckpt_steps``).
- **Placement**: the student, the projections and any online teacher are moved to the
  training device (TextBrewer left models to the user); only the student (and, under DDP,
  each projection) is wrapped for data parallelism, never a teacher.
- **Loss weights** come from :func:`~cachebrew.distill.loss.scheduled_weights` as a pure
  function of the step; the config is never written.
- **LR schedule**: either TextBrewer's ``scheduler_class(optimizer=..., **scheduler_args)`` or
  a typed ``lr_schedule(step) -> factor`` (a ``LambdaLR`` over every param group, projection
  groups included); step ``s`` (0-based) trains with ``base_lr * lr_schedule(s)``.
- **Progress** is the caller's to draw: the loop logs, counts (:class:`Throughput`) and calls
  its :class:`TrainObserver`; it draws no bar. The observer may end training early
  (:meth:`TrainObserver.should_stop`, checked after each step and its checkpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from cachebrew._version import __version__
from cachebrew.config import DistillationConfig, TrainingConfig
from cachebrew.distill import checkpoint as ckpt
from cachebrew.distill import compat as compat_
from cachebrew.distill import runtime
from cachebrew.distill.batches import count_examples, split_batch
from cachebrew.distill.loss import scheduled_weights
from cachebrew.distill.objectives import Objective
from cachebrew.distill.plan import TrainPlan
from cachebrew.distill.tracking import MetricsLogger, ScalarSink, Throughput, TrainObserver
from cachebrew.errors import ConfigError

logger = logging.getLogger(__name__)


class BatchSource(Protocol):
    """Where micro-batches come from (:class:`~cachebrew.distill.sources.SingleSource`,
    :class:`~cachebrew.distill.sources.MultiTaskSource`)."""

    def begin_epoch(self, epoch: int) -> None: ...

    def next_micro_batch(self) -> tuple[Any, str | None]: ...

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def load_state_dict(self, plain: dict[str, Any], tensors: dict[str, Any]) -> None: ...


@dataclass
class TrainJob:
    """Everything one ``train()`` call needs; built by the distiller façades.

    ``lr_schedule`` (``step -> factor``, exclusive with ``scheduler_class``/``scheduler``) is
    the typed way to schedule the learning rate; ``observer`` receives the loop's progress;
    ``metrics_sink`` is a TensorBoard writer shared with the caller (default: the loop's own
    for ``train_config.log_dir``).
    """

    objective: Objective
    student: nn.Module
    projections: nn.ModuleDict
    teachers: list[nn.Module]
    train_config: TrainingConfig
    distill_config: DistillationConfig | None
    optimizer: torch.optim.Optimizer
    source: BatchSource
    plan: TrainPlan
    scheduler_class: Callable[..., Any] | None = None
    scheduler_args: Mapping[str, Any] | None = None
    scheduler: Any = None
    max_grad_norm: float = -1.0
    callback: Callable[..., Any] | None = None
    postprocess: Callable[[Any, str | None], Any] = lambda batch, task: batch
    forward_args: Mapping[str, Any] = field(default_factory=dict)
    log_flush_steps: int = 20
    lr_schedule: Callable[[int], float] | None = None
    observer: TrainObserver | None = None
    metrics_sink: ScalarSink | None = None


@dataclass
class LoopState:
    """Progress counters saved in checkpoints."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


def add_projection_groups(optimizer: torch.optim.Optimizer, job: TrainJob) -> None:
    """Add one param group per projection, once (a second ``train()`` does not re-add them).

    The group options are the match's ``proj[3]`` dict (e.g. ``{'lr': 1e-3}``), as TextBrewer.
    """
    if job.distill_config is None:
        return
    matches = job.distill_config.intermediate_matches
    present = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, projection in job.projections.items():
        params = list(projection.parameters())
        proj = matches[int(name)].proj
        if params and proj is not None and not any(id(p) in present for p in params):
            optimizer.add_param_group({"params": params, **proj[3]})


def build_scheduler(job: TrainJob) -> Any:
    """The job's LR scheduler (call after the projection groups are added), or None.

    Raises:
        ConfigError: both ``lr_schedule`` and ``scheduler_class`` are given.
    """
    if job.lr_schedule is not None:
        if job.scheduler_class is not None or job.scheduler is not None:
            raise ConfigError("train(): give lr_schedule or a scheduler, not both")
        return torch.optim.lr_scheduler.LambdaLR(job.optimizer, lr_lambda=job.lr_schedule)
    if job.scheduler_class is not None:
        return job.scheduler_class(optimizer=job.optimizer, **(job.scheduler_args or {}))
    if job.scheduler is not None:
        logger.warning("scheduler= is deprecated; pass scheduler_class and scheduler_args")
    return job.scheduler


class TrainingRun:
    """One ``train()`` call. Use :func:`run_training`, or call the four phases in order."""

    def __init__(self, job: TrainJob):
        self.job = job
        self.config = job.train_config
        self.plan = job.plan
        self.state = LoopState()
        self.rank = runtime.global_rank(self.config)
        self.device = self.config.resolved_device()
        self.throughput = Throughput()
        self.observer = job.observer if job.observer is not None else TrainObserver()
        self.metrics = MetricsLogger(None, enabled=False)

    # ---------------------------------------------------------------------------- setup

    def setup(self, resume_from: str | None = None) -> None:
        """Place modules, seed, build scheduler/precision/DDP/logger, optionally resume."""
        job = self.job
        job.student.to(self.device)
        job.projections.to(self.device)
        for teacher in job.teachers:
            teacher.to(self.device)
        self.precision = runtime.Precision(self.config, self.device)
        if self.config.seed is not None:
            runtime.seed_everything(self.config.seed)
        add_projection_groups(job.optimizer, job)
        self.scheduler = build_scheduler(job)
        self.model = runtime.wrap_student(job.student, self.config, self.device)
        self.projections = runtime.wrap_projections(job.projections, self.config, self.device)
        compat = job.distill_config is not None and job.distill_config.textbrewer_compat
        self.parameters = compat_.clipped_parameters(
            job.student, job.projections, compat, job.max_grad_norm
        )
        # Every rank keeps its loss history (the runner averages them); rank 0 alone writes.
        self.metrics = MetricsLogger(
            self.config.log_dir if self.rank == 0 else None,
            flush_every=job.log_flush_steps,
            throughput=self.throughput,
            sink=job.metrics_sink if self.rank == 0 else None,
        )
        if resume_from is not None:
            path = ckpt.resolve_checkpoint(resume_from, self.config.output_dir)
            if path is not None:
                self.resume(path)
        job.optimizer.zero_grad()  # stale gradients from before train() never leak into step 1

    def resume(self, path: Any) -> None:
        """Restore weights, optimizer/scheduler/scaler, counters, data position and RNGs."""
        job = self.job
        state, tensors = ckpt.load_checkpoint(path, job.student, job.projections)
        self.plan.check_resumable(state["plan"])
        job.optimizer.load_state_dict(tensors["optimizer"])
        if self.scheduler is not None and "scheduler" in tensors:
            self.scheduler.load_state_dict(tensors["scheduler"])
        self.precision.scaler.load_state_dict(tensors["scaler"])
        self.state = LoopState(**state["loop"])
        if self.plan.resumes_mid_pass(self.state):
            job.source.load_state_dict(state["source"], tensors["source"])
        runtime.restore_rng(state["rng"], tensors["rng"])
        logger.info("resumed from %s at global step %d", path, self.state.global_step)

    # ---------------------------------------------------------------------------- train

    def train(self) -> None:
        """Run optimizer steps until the plan's total, reporting to the observer."""
        total = self.plan.total_steps
        self.throughput.started = time.perf_counter()
        self.observer.on_train_begin(total, self.state.global_step, self.throughput)
        try:
            while self.state.global_step < total:
                self._begin_epoch_if_needed()
                weights = scheduled_weights(self.job.distill_config, self.state.global_step, total)
                for _ in range(self.plan.accumulation):
                    self._train_micro_batch(weights)
                lr = self._optimizer_step()
                self.state.global_step += 1
                self.state.step_in_epoch += 1
                self.metrics.end_step(self.state.global_step, lr)
                self.observer.on_step(self.state.global_step, lr)
                if self.plan.should_save(self.state):
                    self.save_checkpoint()
                    self._run_callback()
                if self.observer.should_stop():
                    logger.info(
                        "stopped at global step %d: the observer asked", self.state.global_step
                    )
                    break
        finally:
            self.throughput.finished = time.perf_counter()
            self.observer.on_train_end()

    def _begin_epoch_if_needed(self) -> None:
        if not self.plan.by_epochs:
            return
        if self.state.step_in_epoch == self.plan.steps_per_epoch:
            self._draw_leftover_batches()
            self.state.epoch += 1
            self.state.step_in_epoch = 0
        if self.state.step_in_epoch == 0:
            logger.info("epoch %d", self.state.epoch + 1)
            self.observer.on_epoch(self.state.epoch)
            self.job.source.begin_epoch(self.state.epoch)
            self.job.optimizer.zero_grad()

    def _draw_leftover_batches(self) -> None:
        """``textbrewer_compat``: run the epoch's leftover micro-batches forward, unused.

        TextBrewer trained on them and dropped their gradients at the next epoch's
        ``zero_grad()``; cachebrew skips them, which changes nothing but the random draws
        (dropout) of every later step. Under the switch their forwards run (without
        gradients, which are discarded anyway) so the draws are TextBrewer's.
        """
        job = self.job
        if not self.plan.leftover_batches or job.distill_config is None:
            return
        if not job.distill_config.textbrewer_compat:
            if any(isinstance(m, nn.Dropout) and m.p > 0 for m in job.student.modules()):
                compat_.note_difference("leftover_batches")  # only dropout makes it differ
            return
        for _ in range(self.plan.leftover_batches):
            batch, task = job.source.next_micro_batch()
            batch = job.postprocess(batch, task)
            with torch.no_grad(), self.precision.autocast():
                job.objective.forward(self.model, batch, task, job.forward_args)

    def _train_micro_batch(self, weights: Any) -> None:
        job = self.job
        waiting = time.perf_counter()
        batch, task = job.source.next_micro_batch()
        self.throughput.data_wait += time.perf_counter() - waiting
        batch = job.postprocess(batch, task)
        with self.precision.autocast():
            forwarded = job.objective.forward(self.model, batch, task, job.forward_args)
        output = job.objective.loss(forwarded, weights, self.projections)
        num_examples = count_examples(split_batch(batch).student)
        self.throughput.examples += num_examples
        self.throughput.micro_batches += 1
        self.metrics.add_micro_batch(output)
        self.observer.on_micro_batch(num_examples, output.total.detach())
        loss = output.total / self.plan.accumulation
        self.precision.scaler.scale(loss).backward()

    def _optimizer_step(self) -> float:
        """Clip, step, schedule, zero; returns the learning rate the step used."""
        optimizer, scaler = self.job.optimizer, self.precision.scaler
        if self.job.max_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters, self.job.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        optimizer.zero_grad()
        return float(lr)

    def _run_callback(self) -> None:
        if self.job.callback is not None and self.rank == 0:
            logger.info("running callback at global step %d", self.state.global_step)
            runtime.call_with_student_restored(
                self.job.callback, self.job.student, self.state.global_step
            )

    # ------------------------------------------------------------------ save / cleanup

    def save_checkpoint(self) -> None:
        """Write a full checkpoint on rank 0 (see :mod:`~cachebrew.distill.checkpoint`)."""
        self.metrics.flush()
        if self.rank != 0:
            return
        source_plain, source_tensors = self.job.source.state_dict()
        rng_plain, rng_tensors = runtime.capture_rng()
        state = {
            "cachebrew_version": __version__,
            "loop": vars(self.state).copy(),
            "plan": self.plan.describe(),
            "source": source_plain,
            "rng": rng_plain,
        }
        tensors = {
            "optimizer": self.job.optimizer.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "source": source_tensors,
            "rng": rng_tensors,
        }
        if self.scheduler is not None:
            tensors["scheduler"] = self.scheduler.state_dict()
        path = ckpt.save_checkpoint(
            self.config.output_dir,
            self.state.global_step,
            self.job.student,
            self.job.projections,
            state,
            tensors,
        )
        self.observer.on_save(self.state.global_step, path)

    def cleanup(self) -> None:
        """Flush and close the metrics writer."""
        self.metrics.close()


def run_training(job: TrainJob, resume_from: str | None = None) -> TrainingRun:
    """setup -> train -> cleanup for one job, with the student in train mode and every
    teacher in eval mode throughout (previous modes restored afterwards)."""
    run = TrainingRun(job)
    with runtime.training_modes(job.student, job.teachers):
        try:
            run.setup(resume_from)
            run.train()
        finally:
            run.cleanup()
    return run
