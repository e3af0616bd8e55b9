"""Everything ``cachebrew distill`` builds before step 1: cache, student, tokens, teacher, dataset.

:func:`setup_run` opens the cache, loads the student (``task``/``num_labels`` from the cache's
teacher kind and logits width unless given) and, in online mode, the teacher, checks the config
against them (:mod:`cachebrew.runner.checks`), splits off the eval examples and builds the
:class:`~cachebrew.cache.feed.dataset.CacheDataset`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cachebrew import models
from cachebrew.cache.read.reader import CacheReader, open_cache
from cachebrew.config import TrainingConfig
from cachebrew.distill.base import make_plan
from cachebrew.distill.checkpoint import LATEST, read_state, resolve_checkpoint
from cachebrew.distill.plan import TrainPlan
from cachebrew.errors import ConfigError
from cachebrew.models.request import ModelRequest, matched_features
from cachebrew.runner.checks import (
    CLASSIFICATION_KINDS,
    check_online_teacher,
    check_out_dir,
    check_run,
)
from cachebrew.runner.config import DistillRunConfig
from cachebrew.runner.distributed import World, current_world, rank_training_config
from cachebrew.runner.evaluate import split_eval_ids
from cachebrew.runner.tokens import StudentTokens, resolve_student_tokens

logger = logging.getLogger(__name__)


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
    plan: TrainPlan
    start_step: int
    world: World = field(default_factory=World)

    @property
    def mode(self) -> str:
        """``cache`` (features from the cache), ``online`` (live teacher) or ``labels``."""
        if self.cfg.distill_config is None:
            return "labels"
        return "online" if self.teacher is not None else "cache"


def _check_run_dir(cfg: DistillRunConfig, resume: bool) -> None:
    check_out_dir(cfg)
    if not resume and (cfg.run_dir / "checkpoints" / LATEST).exists():
        raise ConfigError(
            f"out: {cfg.out} already holds checkpoints of an earlier run; pass --resume to "
            "continue it, or choose another out (or delete it)"
        )


def setup_run(cfg: DistillRunConfig, resume: bool) -> RunSetup:
    """Open the cache, load the models, check everything, build the dataset."""
    from cachebrew.cache.feed.dataset import CacheDataset
    from cachebrew.cache.feed.global_batches import check_global_batch

    world = current_world()
    check_global_batch(cfg.batch_size, world.world_size)  # before any model is loaded
    reader = open_cache(cfg.cache)
    train_config = rank_training_config(cfg.train_config(), world)
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
    device = train_config.resolved_device()
    dataset = CacheDataset(  # the one-process order, each rank its share of a batch
        reader,
        batch_size=cfg.batch_size,
        rank=world.rank,
        world_size=world.world_size,
        partition="global_batches",
        seed=train_config.seed or 0,
        shuffle=True,
        buffer_size=cfg.shuffle_buffer,
        example_ids=train_ids,
        teacher_cache=teacher is None and cfg.distill_config is not None,
        # Decoding ahead overlaps the step, and runs on into the next epoch (BENCHMARKS.md).
        prefetch=1,
        device=device,  # CUDA: features leave pinned memory without blocking, cast on the GPU
        **tokens.dataset_kwargs(),
    )
    plan = make_plan(train_config, dataset, cfg.num_epochs, cfg.num_steps)
    start_step = checkpoint_step(train_config) if resume else 0
    return RunSetup(
        cfg,
        reader,
        student,
        tokens,
        teacher,
        train_ids,
        eval_ids,
        dataset,
        train_config,
        plan,
        start_step,
        world,
    )


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


def student_request(cfg: DistillRunConfig, *, evaluate: bool = False) -> ModelRequest:
    """What the student is asked for: the features its matches read (none to ``evaluate``),
    the run's ``attn_implementation`` and ``training.gradient_checkpointing``."""
    reads = set() if evaluate else matched_features(cfg.distill_config)
    return ModelRequest(
        hidden_states="hidden" in reads,
        attentions="attention" in reads,
        attn_implementation=cfg.attn_implementation,
        device=str(cfg.train_config().resolved_device()),
        gradient_checkpointing=cfg.training.gradient_checkpointing and not evaluate,
    )


def load_student(
    cfg: DistillRunConfig, reader: CacheReader, seed: int, *, evaluate: bool = False
) -> models.LoadedModel:
    """The student, its head taken from the cache's teacher unless ``task``/``num_labels``;
    asked for what the run reads (:func:`student_request`; nothing when ``evaluate``)."""
    teacher_kind = reader.manifest["teacher"].get("kind")
    task = cfg.task or (teacher_kind if teacher_kind in models.TASK_MODEL_CLASSES else None)
    num_labels = cfg.num_labels
    logits = reader.manifest["arrays"].get("logits")
    if num_labels is None and task in CLASSIFICATION_KINDS and logits is not None:
        num_labels = int(logits["width"])
    student = models.load_model(
        cfg.student, task=task, num_labels=num_labels, role="student", seed=seed,
        request=student_request(cfg, evaluate=evaluate),
    )  # fmt: skip
    if cfg.init_from_teacher is not None:
        init = cfg.init_from_teacher
        models.init_from_teacher(student.model, init.path, list(init.layers))
    return student


def load_online_teacher(cfg: DistillRunConfig, reader: CacheReader) -> models.LoadedModel:
    """The live teacher of online mode, checked against the cache's recorded teacher."""
    teacher_kind = reader.manifest["teacher"].get("kind")
    task = teacher_kind if teacher_kind in models.TASK_MODEL_CLASSES else None
    reads = matched_features(
        cfg.distill_config
    )  # the matches read the same features of the teacher
    request = ModelRequest(
        hidden_states="hidden" in reads,
        attentions="attention" in reads,
        device=str(cfg.train_config().resolved_device()),
    )
    teacher = models.load_model(str(cfg.teacher), task=task, role="teacher", request=request)
    check_online_teacher(cfg, reader, teacher, cfg.allow_teacher_mismatch)
    return teacher


def checkpoint_step(train_config: TrainingConfig) -> int:
    """The global step of the run's latest checkpoint, 0 when it has none."""
    path = resolve_checkpoint(LATEST, train_config.output_dir)
    return 0 if path is None else int(read_state(path)["loop"]["global_step"])
