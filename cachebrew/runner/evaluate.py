"""Evaluate a trained student on held-out cache examples or a labelled corpus (``eval:``).

Predictions are the argmax of the student adaptor's ``logits`` (:func:`cachebrew.metrics.predict`);
labels of -100 (special tokens, later sub-tokens) are skipped. The metric defaults to
``accuracy`` for sequence classification and ``token_f1`` for token classification (see
:mod:`cachebrew.metrics`).

**Eval split.** ``eval: {fraction: f}`` holds out the examples whose
``sha256(f"{seed}:{example_id}")`` falls in the lowest fraction ``f`` of the hash range: a
pure function of the id, so the split is the same for every student, order and shard layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from cachebrew.cache.reader import CacheReader
from cachebrew.corpus import pad_batch
from cachebrew.errors import ConfigError
from cachebrew.metrics import METRICS, predict
from cachebrew.models import LoadedModel
from cachebrew.runner.config import DataConfig, DistillRunConfig, EvalConfig
from cachebrew.runner.tokens import StudentTokens, max_length, student_items


def default_metric(kind: str) -> str:
    """``token_f1`` for tagging heads, else ``accuracy``."""
    return "token_f1" if kind == "token_classification" else "accuracy"


def evaluate_student(
    cfg: DistillRunConfig,
    reader: CacheReader,
    student: LoadedModel,
    tokens: StudentTokens,
    eval_ids: Sequence[str] | None,
    device: torch.device,
) -> tuple[str | None, float | None, int]:
    """``(metric name, value, number of examples)``; ``(None, None, 0)`` without ``eval:``."""
    if cfg.eval is None:
        return None, None, 0
    from cachebrew.cache.dataset import CacheDataset

    if cfg.eval.data is not None:
        batches, count = corpus_eval_batches(cfg.eval, tokens, max_length(reader))
        source: Iterable[dict[str, Any]] = batches
    else:
        dataset = CacheDataset(
            reader,
            batch_size=cfg.eval.batch_size,
            shuffle=False,
            example_ids=list(eval_ids or []),
            teacher_cache=False,
            **tokens.dataset_kwargs(),
        )
        source, count = student_batches(dataset), len(eval_ids or [])
    predictions, labels = predict(student.model, student.adaptor, source, device)
    name = cfg.eval.metric or default_metric(student.kind)
    kwargs = {"outside_label": cfg.eval.outside_label} if name == "token_f1" else {}
    return name, METRICS[name](predictions, labels, **kwargs), count


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


def student_batches(dataset: Any) -> Iterator[dict[str, Any]]:
    """The ``'student'`` part of every batch of a CacheDataset."""
    for batch in dataset:
        yield batch["student"]
