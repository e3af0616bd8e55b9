"""``cachebrew distill``: stream a teacher cache into one student (setup -> train -> evaluate -> save).

:func:`run_distill` sets the run up (:mod:`cachebrew.runner.setup`), logs the plan, then trains with
:class:`~cachebrew.distill.GeneralDistiller` (``model_T=None``: every batch carries its
``teacher_cache``) or, with ``kd: false`` / ``distill: null``, with
:class:`~cachebrew.distill.BasicTrainer` on the labels alone (no teacher feature is read).
With ``teacher:`` (online mode) the live teacher runs on the inputs stored in the cache.

RUN_DIR (``out``) receives ``checkpoints/`` (full checkpoints, ``keep_checkpoints`` of them:
:mod:`cachebrew.runner.monitor`; ``resume=True`` continues from the latest), ``tb/``
(TensorBoard), ``config.yaml`` (the resolved config, reusable with ``--config``), ``final/``
(the student as a Hugging Face directory: :mod:`cachebrew.runner.export`) and
``metrics.json`` (:data:`METRICS_KEYS`, written last: ``metric``/``value`` are the primary
eval metric, ``eval_metrics`` every one, ``eval_curve`` the scores during training).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from cachebrew import models
from cachebrew.cache.format.manifest import manifest_digest
from cachebrew.distill import BasicTrainer, GeneralDistiller
from cachebrew.distill.base import Trainer, single_postprocess
from cachebrew.distill.checkpoint import LATEST
from cachebrew.distill.loss import match_name
from cachebrew.distill.runtime import global_rank
from cachebrew.distill.sources import SingleSource
from cachebrew.distill.tracking import ScalarSink, Throughput
from cachebrew.files import write_json_atomic
from cachebrew.runner.config import DistillRunConfig, OptimizerConfig
from cachebrew.runner.distributed import join_world, leave_world, reduce_trained
from cachebrew.runner.evaluate import StudentEvaluator
from cachebrew.runner.export import save_final
from cachebrew.runner.monitor import Observers, RunMonitor
from cachebrew.runner.progress import ForwardCounter, RunProgress
from cachebrew.runner.setup import RunSetup, _check_run_dir, setup_run
from cachebrew.schedules import lr_factor

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
METRICS_KEYS = (
    "run",
    "status",
    "student",
    "kd",
    "mode",
    "cache",
    "cache_manifest_sha256",
    "examples",
    "steps",
    "steps_this_run",
    "resumed_from_step",
    "final_loss",
    "loss_curve",
    "loss_terms",
    "examples_trained",
    "examples_per_s",
    "data_wait_share",
    "teacher_forwards",
    "params",
    "seconds",
    "train_seconds",
    "metric",
    "value",
    "eval_examples",
    "eval_metrics",
    "eval_curve",
)


def run_distill(
    cfg: DistillRunConfig, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train one student from a cache; write RUN_DIR; return the metrics.

    Raises:
        ConfigError: the config does not fit the cache or the student (every problem at once),
            RUN_DIR holds checkpoints and ``resume`` is False.
        CacheError: the cache is missing, incomplete or corrupt.
    """
    started = time.perf_counter()
    world = join_world(cfg.training.device)  # torchrun: DDP; otherwise one process
    _check_run_dir(cfg, resume)
    setup = setup_run(cfg, resume)
    log_plan(setup)
    if world.is_main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        config_text = yaml.safe_dump(cfg.to_portable_dict(), sort_keys=False)
        (cfg.run_dir / CONFIG_FILE).write_text(config_text)
    # Only rank 0 evaluates and prunes checkpoints (they share RUN_DIR with the other ranks).
    evaluator = _evaluator(setup) if world.is_main else None
    sink = ScalarSink(setup.train_config.log_dir if world.is_main else None)  # RUN_DIR/tb
    monitor = _monitor(setup, evaluator, sink) if world.is_main else None
    try:
        trained = train_student(setup, progress, monitor, sink)
        if not world.is_main:  # rank 0 evaluates and writes the metrics
            return _metrics(setup, trained)
        scores = evaluator() if evaluator is not None else {}
        if scores and monitor is not None:
            monitor.log_final(setup.plan.total_steps, scores)
    finally:
        sink.close()
    save_final(cfg.run_dir, setup.student, setup.tokens.tokenizer, setup.reader)
    metrics = _metrics(setup, trained)
    metric = evaluator.names[0] if evaluator is not None else None
    metrics.update(metric=metric, value=scores.get(metric) if metric else None)
    metrics.update(eval_examples=evaluator.num_examples if evaluator is not None else 0)
    metrics.update(
        eval_metrics=scores or None, eval_curve=(monitor.curve if monitor else None) or None
    )
    metrics["seconds"] = time.perf_counter() - started
    write_json_atomic(cfg.run_dir / METRICS_FILE, metrics)
    logger.info("%s: %s", cfg.out, _summary(metrics))
    return metrics


# ------------------------------------------------------------------------------------ train


def build_optimizer(opt: OptimizerConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW over :func:`~cachebrew.models.adamw_param_groups` with the run's settings."""
    groups = models.adamw_param_groups(model, opt.weight_decay)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)


def lr_schedule(cfg: DistillRunConfig, total_steps: int) -> Callable[[int], float]:
    """``step -> LR factor`` of the run: :func:`~cachebrew.schedules.lr_factor` with its
    warm-up and decay over ``total_steps``."""
    warmup = cfg.schedule.warmup(total_steps)
    return functools.partial(lr_factor, warmup=warmup, total=total_steps, name=cfg.schedule.name)


@dataclass
class Trained:
    """What training hands to the metrics: the loss history and the loop's counters."""

    history: list[dict[str, float]]
    throughput: Throughput
    teacher_forwards: int


def _distiller(setup: RunSetup) -> Trainer:
    student = setup.student
    distill = setup.cfg.distill_config
    torch.manual_seed(setup.train_config.seed or 0)  # projections are initialised here
    if distill is None:
        return BasicTrainer(setup.train_config, student.model, student.adaptor)
    teacher = setup.teacher
    return GeneralDistiller(
        setup.train_config,
        distill,
        model_T=teacher.model if teacher is not None else None,
        model_S=student.model,
        adaptor_T=teacher.adaptor if teacher is not None else None,
        adaptor_S=student.adaptor,
    )


def _evaluator(setup: RunSetup) -> StudentEvaluator | None:
    if setup.cfg.eval is None:
        return None
    return StudentEvaluator(
        setup.cfg,
        setup.reader,
        setup.student,
        setup.tokens,
        setup.eval_ids,
        setup.train_config.resolved_device(),
    )


def _monitor(setup: RunSetup, evaluator: StudentEvaluator | None, sink: ScalarSink) -> RunMonitor:
    """Evaluation during training (rank 0) and ``keep_checkpoints``."""
    cfg, train_config = setup.cfg, setup.train_config
    rank0 = global_rank(train_config) == 0
    return RunMonitor(
        evaluator if rank0 else None,
        evaluator.names[0] if evaluator is not None else None,
        cfg.eval.every_steps if cfg.eval is not None else None,
        train_config.output_dir,
        cfg.keep_checkpoints,
        sink=sink if rank0 else None,
    )


def train_student(
    setup: RunSetup,
    progress: bool,
    monitor: RunMonitor | None = None,
    sink: ScalarSink | None = None,
) -> Trained:
    """Train with the run's plan, LR schedule and progress bar (rank 0, on a terminal);
    ``monitor`` evaluates during training and prunes checkpoints; ``sink`` is the run's one
    TensorBoard writer (None: the loop's own for ``training.log_dir``)."""
    cfg = setup.cfg
    distiller = _distiller(setup)
    # A bar is for a person watching: not on other ranks, not into a log file (sweep).
    show = progress and global_rank(setup.train_config) == 0 and sys.stderr.isatty()
    bar = RunProgress(show)
    observer = Observers([bar, monitor]) if monitor is not None else bar
    counter = ForwardCounter(setup.teacher.model) if setup.teacher is not None else None
    postprocess = (lambda batch: batch["student"]) if cfg.distill_config is None else None
    job = distiller.make_job(
        build_optimizer(cfg.optimizer, setup.student.model),
        SingleSource(setup.dataset),
        setup.plan,
        lr_schedule=lr_schedule(cfg, setup.plan.total_steps),
        max_grad_norm=cfg.max_grad_norm,
        postprocess=single_postprocess(postprocess),
        observer=observer,
        metrics_sink=sink,
    )
    try:
        run = distiller.run_job(job, resume_from=LATEST if setup.start_step > 0 else None)
    finally:
        if counter is not None:
            counter.remove()
    forwards = counter.count if counter is not None else 0
    # the last collectives of a DDP run: loss means and example sums over the ranks
    history = reduce_trained(run.metrics.history, run.throughput, setup.world)
    leave_world(setup.world)
    return Trained(history, run.throughput, forwards)


# ------------------------------------------------------------------------------ plan, results


def log_plan(setup: RunSetup) -> None:
    """One short paragraph: student, params, cache, examples, steps, matches."""
    cfg, distill = setup.cfg, setup.cfg.distill_config
    num_train = len(setup.train_ids) if setup.train_ids is not None else setup.reader.num_examples
    matches = [match_name(m) for m in distill.intermediate_matches] if distill else []
    kd = (
        "none (hard labels)"
        if distill is None
        else f"{distill.kd_loss_type}, T={distill.temperature}"
    )
    lines = [
        f"student   {cfg.student} ({type(setup.student.model).__name__}, "
        f"{models.count_parameters(setup.student.model):,} params, {setup.student.kind})",
        f"cache     {cfg.cache}: {setup.reader.num_examples} examples, "
        f"{num_train} trained on, {len(setup.eval_ids or [])} held out",
        f"inputs    {setup.tokens.source}" + (" (re-tokenized)" if setup.tokens.other else ""),
        f"mode      {setup.mode}" + (f" (teacher {cfg.teacher})" if setup.teacher else ""),
        f"steps     {setup.plan.total_steps} (batch {cfg.batch_size}, "
        + (f"{cfg.num_steps} steps" if cfg.num_steps else f"{cfg.num_epochs} epochs")
        + (f", resuming at {setup.start_step})" if setup.start_step else ")"),
        f"kd        {kd}; matches: {', '.join(matches) or 'none'}",
    ]
    logger.info("distill plan\n  %s", "\n  ".join(lines))


def _metrics(setup: RunSetup, trained: Trained) -> dict[str, Any]:
    cfg, history, counters = setup.cfg, trained.history, trained.throughput
    last = history[-1] if history else {}
    return {
        "run": cfg.run_dir.name,
        "status": "ok",
        "student": cfg.student,
        "kd": cfg.distill_config is not None,
        "mode": setup.mode,
        "cache": cfg.cache,
        "cache_manifest_sha256": manifest_digest(setup.reader.manifest),
        "examples": len(setup.train_ids or []) or setup.reader.num_examples,
        "steps": setup.start_step + len(history),
        "steps_this_run": len(history),
        "resumed_from_step": setup.start_step or None,
        "final_loss": last.get("total_loss"),
        "loss_curve": [row["total_loss"] for row in history],
        "loss_terms": {k: v for k, v in last.items() if k not in ("step", "lr")},
        "examples_trained": counters.examples,
        "examples_per_s": counters.examples_per_s,
        "data_wait_share": counters.data_wait_share,
        "teacher_forwards": trained.teacher_forwards,
        "params": models.count_parameters(setup.student.model),
        "train_seconds": counters.seconds,
    }


def _summary(metrics: dict[str, Any]) -> str:
    value = metrics.get("value")
    result = f", {metrics['metric']} {value:.4f}" if value is not None else ""
    loss = metrics.get("final_loss")
    loss_text = f"{loss:.4f}" if loss is not None else "n/a"
    return (
        f"{metrics['steps']} steps, final loss {loss_text}, "
        f"{metrics['examples_per_s']:.1f} examples/s{result}"
    )
