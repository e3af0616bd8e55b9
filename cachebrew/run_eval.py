"""Evaluate a trained student on held-out cache examples or a labelled corpus (``eval:``).

Predictions are the argmax of the student adaptor's ``logits``; labels of -100 (special tokens,
later sub-tokens) are skipped. The metric defaults to ``accuracy`` for sequence classification
and ``token_f1`` for token classification (see :mod:`cachebrew.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from cachebrew.cache.reader import CacheReader
from cachebrew.metrics import METRICS
from cachebrew.models import LoadedModel
from cachebrew.run_config import DistillRunConfig
from cachebrew.run_data import StudentTokens, corpus_eval_batches, max_length, student_batches


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
    predictions, labels = predict(student, source, device)
    name = cfg.eval.metric or default_metric(student.kind)
    kwargs = {"outside_label": cfg.eval.outside_label} if name == "token_f1" else {}
    return name, METRICS[name](predictions, labels, **kwargs), count


@torch.no_grad()
def predict(
    student: LoadedModel, batches: Iterable[dict[str, Any]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat predicted and gold class ids over every batch (batches must carry ``labels``)."""
    model = student.model
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            outputs = model(**inputs)
            logits = student.adaptor(inputs, outputs)["logits"]
            logits = logits[0] if isinstance(logits, list | tuple) else logits
            predictions.append(logits.argmax(dim=-1).reshape(-1).cpu())
            labels.append(batch["labels"].reshape(-1).cpu())
    finally:
        model.train(was_training)
    if not predictions:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(predictions), torch.cat(labels)
