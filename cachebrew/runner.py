"""``cachebrew distill``: stream a teacher cache into one student (setup -> train -> evaluate -> save).

:func:`run_distill` opens the cache, loads the student (``task``/``num_labels`` from the cache's
teacher kind and logits width unless given), checks the config against the cache and student
(:mod:`cachebrew.run_checks`), logs the plan, then trains with
:class:`~cachebrew.distill.GeneralDistiller` (``model_T=None``: every batch carries its
``teacher_cache``) or, with ``kd: false`` / ``distill: null``, with
:class:`~cachebrew.distill.BasicTrainer` on the labels alone (no teacher feature is read).
With ``teacher:`` (online mode) the live teacher runs on the inputs stored in the cache.

RUN_DIR (``out``) receives ``checkpoints/`` (full checkpoints; ``resume=True`` continues from
the latest), ``tb/`` (TensorBoard), ``config.yaml`` (the resolved config, reusable with
``--config``) and ``metrics.json`` (:data:`METRICS_KEYS`, written last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from cachebrew import models
from cachebrew.cache.reader import CacheReader, open_cache
from cachebrew.config import TrainingConfig
from cachebrew.distill.checkpoint import LATEST, STATE_FILE, resolve_checkpoint
from cachebrew.distill.compute import match_name
from cachebrew.errors import ConfigError
from cachebrew.run_checks import CLASSIFICATION_KINDS, check_run
from cachebrew.run_config import DistillRunConfig
from cachebrew.run_data import StudentTokens, resolve_student_tokens, split_eval_ids
from cachebrew.run_eval import evaluate_student
from cachebrew.run_progress import (
    ForwardCounter,
    ObservedBasicTrainer,
    ObservedGeneralDistiller,
    TimedBatches,
    TrainObserver,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
METRICS_KEYS = (
    "run", "status", "student", "kd", "mode", "cache", "cache_manifest_sha256", "examples",
    "steps", "steps_this_run", "resumed_from_step", "final_loss", "loss_curve", "loss_terms",
    "examples_trained", "examples_per_s", "data_wait_share", "teacher_forwards", "params",
    "seconds", "train_seconds", "metric", "value", "eval_examples",
)  # fmt: skip


@dataclass
class RunSetup:
    """Everything built before step 1."""

    cfg: DistillRunConfig
    reader: CacheReader
    student: models.LoadedModel
    tokens: StudentTokens
    teacher: models.LoadedModel | None
    train_ids: list[str] | None
    eval_ids: list[str] | None
    dataset: Any
    train_config: TrainingConfig
    total_steps: int
    start_step: int

    @property
    def mode(self) -> str:
        """``cache`` (features from the cache), ``online`` (live teacher) or ``labels``."""
        if self.cfg.distill_config is None:
            return "labels"
        return "online" if self.teacher is not None else "cache"


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
    _check_run_dir(cfg, resume)
    setup = setup_run(cfg, resume)
    log_plan(setup)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    observer, history, forwards = train_student(setup, progress)
    metric, value, eval_examples = evaluate_student(
        cfg, setup.reader, setup.student, setup.tokens, setup.eval_ids,
        setup.train_config.resolved_device(),
    )  # fmt: skip
    metrics = _metrics(setup, observer, history, forwards)
    metrics.update(metric=metric, value=value, eval_examples=eval_examples)
    metrics["seconds"] = time.perf_counter() - started
    _write_json(cfg.run_dir / METRICS_FILE, metrics)
    logger.info("%s: %s", cfg.out, _summary(metrics))
    return metrics


def _check_run_dir(cfg: DistillRunConfig, resume: bool) -> None:
    if not resume and (cfg.run_dir / "checkpoints" / LATEST).exists():
        raise ConfigError(
            f"out: {cfg.out} already holds checkpoints of an earlier run; pass --resume to "
            "continue it, or choose another out (or delete it)"
        )


def setup_run(cfg: DistillRunConfig, resume: bool) -> RunSetup:
    """Open the cache, load the models, check everything, build the dataset."""
    from cachebrew.cache.dataset import CacheDataset

    reader = open_cache(cfg.cache)
    train_config = cfg.train_config()
    student = load_student(cfg, reader, train_config.seed or 0)
    tokens = resolve_student_tokens(cfg, reader)
    teacher = None
    if cfg.teacher is not None and cfg.distill_config is not None:
        teacher = load_online_teacher(cfg, reader)
    elif cfg.teacher is not None:
        logger.info("teacher %s not loaded: hard-label training needs no teacher", cfg.teacher)
    teacher_config = getattr(teacher.model, "config", None) if teacher is not None else None
    check_run(cfg, reader, student, student_items=tokens.items, teacher_config=teacher_config)
    train_ids, eval_ids = _split(cfg, reader, tokens)
    dataset = CacheDataset(
        reader,
        batch_size=cfg.batch_size,
        seed=train_config.seed or 0,
        shuffle=True,
        buffer_size=cfg.shuffle_buffer,
        example_ids=train_ids,
        teacher_cache=teacher is None and cfg.distill_config is not None,
        # Decoding ahead overlaps a GPU step; on CPU the thread takes the student's cores.
        prefetch=1 if train_config.resolved_device().type == "cuda" else 0,
        **tokens.dataset_kwargs(),
    )
    total_steps = _total_steps(cfg, train_config, len(dataset))
    start_step = _checkpoint_step(train_config) if resume else 0
    return RunSetup(
        cfg, reader, student, tokens, teacher, train_ids, eval_ids, dataset,
        train_config, total_steps, start_step,
    )  # fmt: skip


def _split(
    cfg: DistillRunConfig, reader: CacheReader, tokens: StudentTokens
) -> tuple[list[str] | None, list[str] | None]:
    ids = None
    if tokens.items is not None:  # train on the cached examples the corpus also has
        stored = reader.example_ids()
        ids = [i for i in stored if i in tokens.items]
        if len(ids) < len(stored):
            logger.warning("data: %d cached examples are not in the corpus", len(stored) - len(ids))
    if cfg.eval is None or cfg.eval.fraction is None:
        return ids, None
    return split_eval_ids(ids or reader.example_ids(), cfg.eval.fraction, cfg.eval.seed)


def load_student(cfg: DistillRunConfig, reader: CacheReader, seed: int) -> models.LoadedModel:
    """The student, its head taken from the cache's teacher unless ``task``/``num_labels``."""
    teacher_kind = reader.manifest["teacher"].get("kind")
    task = cfg.task or (teacher_kind if teacher_kind in models.TASK_MODEL_CLASSES else None)
    num_labels = cfg.num_labels
    logits = reader.manifest["arrays"].get("logits")
    if num_labels is None and task in CLASSIFICATION_KINDS and logits is not None:
        num_labels = int(logits["width"])
    student = models.load_model(
        cfg.student, task=task, num_labels=num_labels, role="student", seed=seed
    )
    if cfg.init_from_teacher is not None:
        init = cfg.init_from_teacher
        models.init_from_teacher(student.model, init.path, list(init.layers))
    return student


def load_online_teacher(cfg: DistillRunConfig, reader: CacheReader) -> models.LoadedModel:
    """The live teacher of online mode (a warning if it is not the cache's teacher)."""
    teacher_kind = reader.manifest["teacher"].get("kind")
    task = teacher_kind if teacher_kind in models.TASK_MODEL_CLASSES else None
    teacher = models.load_model(str(cfg.teacher), task=task, role="teacher")
    cached = reader.manifest["teacher"].get("weights_sha256")
    if teacher.identity.get("weights_sha256") != cached:
        logger.warning("teacher %s is not the teacher the cache was built with", cfg.teacher)
    return teacher


def _total_steps(cfg: DistillRunConfig, train_config: TrainingConfig, num_batches: int) -> int:
    if cfg.num_steps is not None:
        return cfg.num_steps
    per_epoch = num_batches // train_config.gradient_accumulation_steps
    if per_epoch < 1:
        raise ConfigError(
            f"batch_size {cfg.batch_size} x gradient_accumulation_steps "
            f"{train_config.gradient_accumulation_steps}: no optimizer step fits in an epoch "
            f"of {num_batches} batches"
        )
    return per_epoch * int(cfg.num_epochs or 1)


def _checkpoint_step(train_config: TrainingConfig) -> int:
    path = resolve_checkpoint(LATEST, train_config.output_dir)
    if path is None:
        return 0
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    return int(state["loop"]["global_step"])


# ------------------------------------------------------------------------------------ train


def build_optimizer(cfg: DistillRunConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights get no weight decay."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            skip = param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
            (no_decay if skip else decay).append(param)
    opt = cfg.optimizer
    groups = [
        {"params": decay, "weight_decay": opt.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=opt.lr, betas=opt.betas, eps=opt.eps
    )


def lr_factor(step: int, *, warmup: int, total: int, name: str) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Warmup ramps ``1/(w+1) .. w/(w+1)`` (never a zero first step), then ``linear`` decays as
    HF's ``get_linear_schedule_with_warmup`` (``(total - step) / (total - warmup)``),
    ``cosine`` follows half a cosine to 0, ``constant`` stays at 1.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if name == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def _scheduler_args(cfg: DistillRunConfig, total: int) -> dict[str, Any]:
    warmup, name = cfg.schedule.warmup(total), cfg.schedule.name

    def lr_lambda(step: int) -> float:
        return lr_factor(step, warmup=warmup, total=total, name=name)

    return {"lr_lambda": lr_lambda}


def _distiller(setup: RunSetup) -> Any:
    student = setup.student
    distill = setup.cfg.distill_config
    torch.manual_seed(setup.train_config.seed or 0)  # projections are initialised here
    if distill is None:
        return ObservedBasicTrainer(setup.train_config, student.model, student.adaptor)
    teacher = setup.teacher
    return ObservedGeneralDistiller(
        setup.train_config,
        distill,
        model_T=teacher.model if teacher is not None else None,
        model_S=student.model,
        adaptor_T=teacher.adaptor if teacher is not None else None,
        adaptor_S=student.adaptor,
    )


def train_student(
    setup: RunSetup, progress: bool
) -> tuple[TrainObserver, list[dict[str, float]], int]:
    """Run the distiller; returns the observer, the loss history and the teacher forwards."""
    cfg = setup.cfg
    distiller = _distiller(setup)
    accumulation = setup.train_config.gradient_accumulation_steps
    observer = TrainObserver(setup.total_steps, accumulation, setup.start_step, progress)
    distiller.observer = observer
    counter = ForwardCounter(setup.teacher.model) if setup.teacher is not None else None
    postprocess = (lambda batch: batch["student"]) if cfg.distill_config is None else None
    try:
        distiller.train(
            build_optimizer(cfg, setup.student.model),
            TimedBatches(setup.dataset, observer),
            num_epochs=cfg.num_epochs if cfg.num_steps is None else None,
            num_steps=cfg.num_steps,
            scheduler_class=torch.optim.lr_scheduler.LambdaLR,
            scheduler_args=_scheduler_args(cfg, setup.total_steps),
            max_grad_norm=cfg.max_grad_norm,
            batch_postprocessor=postprocess,
            resume_from=LATEST if setup.start_step > 0 else None,
        )
    finally:
        observer.close()
        if counter is not None:
            counter.remove()
    return observer, distiller.loss_history, counter.count if counter is not None else 0


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
        f"steps     {setup.total_steps} (batch {cfg.batch_size}, "
        + (f"{cfg.num_steps} steps" if cfg.num_steps else f"{cfg.num_epochs} epochs")
        + (f", resuming at {setup.start_step})" if setup.start_step else ")"),
        f"kd        {kd}; matches: {', '.join(matches) or 'none'}",
    ]
    logger.info("distill plan\n  %s", "\n  ".join(lines))


def _metrics(
    setup: RunSetup, observer: TrainObserver, history: list[dict[str, float]], forwards: int
) -> dict[str, Any]:
    cfg = setup.cfg
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
        "examples_trained": observer.examples,
        "examples_per_s": observer.examples_per_s,
        "data_wait_share": observer.data_wait_share,
        "teacher_forwards": forwards,
        "params": models.count_parameters(setup.student.model),
        "train_seconds": observer.seconds,
    }


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of a cache manifest (identifies the cache a run was trained on)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _summary(metrics: dict[str, Any]) -> str:
    value = metrics.get("value")
    result = f", {metrics['metric']} {value:.4f}" if value is not None else ""
    loss = metrics.get("final_loss")
    loss_text = f"{loss:.4f}" if loss is not None else "n/a"
    return (
        f"{metrics['steps']} steps, final loss {loss_text}, "
        f"{metrics['examples_per_s']:.1f} examples/s{result}"
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
