"""Evaluate a trained student on held-out cache examples or a labelled corpus (``eval:``).

Predictions are the argmax of the student adaptor's ``logits`` (:func:`cachebrew.metrics.predict`);
labels of -100 (special tokens, later sub-tokens) are skipped. The metrics default to every
metric that fits the task, the primary first (``accuracy`` for sequence classification,
``token_f1`` for token classification; see :mod:`cachebrew.metrics`).

**Eval split.** ``eval: {fraction: f}`` holds out the examples whose
``sha256(f"{seed}:{example_id}")`` falls in the lowest fraction ``f`` of the hash range: a
pure function of the id, so the split is the same for every student, order and shard layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from cachebrew.cache.read.reader import CacheReader
from cachebrew.corpus import pad_batch
from cachebrew.errors import ConfigError
from cachebrew.metrics import IGNORE_INDEX, evaluate_model
from cachebrew.models import LoadedModel
from cachebrew.runner.checks import CLASSIFICATION_KINDS
from cachebrew.runner.config import DataConfig, DistillRunConfig, EvalConfig
from cachebrew.runner.tokens import StudentTokens, max_length, student_items


class StudentEvaluator:
    """Scores the student on the run's eval examples, as often as asked (after training, and
    during it with ``eval.every_steps``); the corpus is tokenized once.

    Attributes:
        names: the metrics reported (:meth:`EvalConfig.metric_names`), the primary first.
        num_examples: examples scored per evaluation.
    """

    def __init__(
        self,
        cfg: DistillRunConfig,
        reader: CacheReader,
        student: LoadedModel,
        tokens: StudentTokens,
        eval_ids: Sequence[str] | None,
        device: torch.device,
    ):
        if cfg.eval is None:
            raise ConfigError("evaluation needs eval: in the run config")
        self.eval_cfg, self.reader, self.student = cfg.eval, reader, student
        self.tokens, self.eval_ids, self.device = tokens, list(eval_ids or []), device
        self.names = cfg.eval.metric_names(student.kind)
        self._batches: list[dict[str, Any]] | None = None
        self.num_examples = len(self.eval_ids)
        if cfg.eval.data is not None:
            eval_cfg = cfg.eval
            if student.kind == "causal_lm":  # scored on its texts' own next tokens: no labels
                eval_cfg = dataclasses.replace(eval_cfg, label_field=None)
            self._batches, self.num_examples = corpus_eval_batches(
                eval_cfg, tokens, max_length(reader)
            )
            check_label_range(self._batches, student, str(cfg.eval.data))

    def _source(self) -> Iterable[dict[str, Any]]:
        if self._batches is not None:
            return self._batches
        from cachebrew.cache.feed.dataset import CacheDataset

        dataset = CacheDataset(
            self.reader,
            batch_size=self.eval_cfg.batch_size,
            shuffle=False,
            example_ids=self.eval_ids,
            teacher_cache=False,
            **self.tokens.dataset_kwargs(),
        )
        return student_batches(dataset)

    def __call__(self) -> dict[str, float]:
        """``{metric: value}`` of the student as it is now (its train/eval mode is kept); a
        causal LM student: its ``perplexity`` on the eval texts."""
        return evaluate_model(
            self.student.model,
            self.student.adaptor,
            self._source(),
            self.student.kind,
            names=self.names,
            device=self.device,
            outside_label=self.eval_cfg.outside_label,
        )


def split_eval_ids(
    example_ids: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """``(train_ids, eval_ids)``: the held-out share by id hash (module docstring).

    Raises:
        ConfigError: the split leaves no training or no evaluation example.
    """
    limit = fraction * 2**256
    train: list[str] = []
    held_out: list[str] = []
    for example_id in example_ids:
        value = int.from_bytes(hashlib.sha256(f"{seed}:{example_id}".encode()).digest(), "big")
        (held_out if value < limit else train).append(example_id)
    if not train or not held_out:
        raise ConfigError(
            f"eval.fraction={fraction}: {len(train)} training and {len(held_out)} evaluation "
            f"examples out of {len(example_ids)}; choose a fraction that leaves both non-empty"
        )
    return train, held_out


def corpus_eval_batches(
    eval_cfg: EvalConfig, tokens: StudentTokens, length: int
) -> tuple[list[dict[str, Any]], int]:
    """Padded batches (with ``labels``) of the labelled corpus at ``eval.data``, and its size.

    Raises:
        ConfigError: no tokenizer for the student.
    """
    if tokens.tokenizer is None:
        raise ConfigError(
            "eval.data: the student has no tokenizer to read it with; give tokenizer: (a "
            "directory with tokenizer.json) or use eval: {fraction: ...}"
        )
    data = DataConfig(path=str(eval_cfg.data), **eval_cfg.corpus_fields())
    items = list(student_items(data, tokens.tokenizer, length).values())
    pad_id = tokens.dataset_kwargs()["pad_id"]
    size = eval_cfg.batch_size
    batches = [pad_batch(items[i : i + size], pad_id) for i in range(0, len(items), size)]
    return batches, len(items)


def check_label_range(batches: Iterable[dict[str, Any]], model: LoadedModel, data: str) -> None:
    """Refuse labels outside a classifier's classes (``finetune`` refuses the same file): scored,
    they would count as errors of a class the model cannot predict and lower every metric.

    Raises:
        ConfigError: names the labels out of range (the first 10), the class count and the fix.
    """
    num_labels = getattr(getattr(model.model, "config", None), "num_labels", None)
    if model.kind not in CLASSIFICATION_KINDS or num_labels is None:
        return
    bad = {
        int(value)
        for batch in batches
        for value in batch["labels"].flatten().tolist()
        if value != IGNORE_INDEX and not 0 <= value < num_labels
    }
    if bad:
        raise ConfigError(
            f"{data}: labels {sorted(bad)[:10]} out of range for the model's {num_labels} "
            f"classes (0..{num_labels - 1}); fix the labels, or evaluate a model with those classes"
        )


def student_batches(dataset: Any) -> Iterator[dict[str, Any]]:
    """The ``'student'`` part of every batch of a CacheDataset."""
    for batch in dataset:
        yield batch["student"]
