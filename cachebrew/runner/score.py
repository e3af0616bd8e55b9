"""``cachebrew eval``: score a model on a labelled corpus with every metric that fits its task.

MODEL is any of:

- a run directory (``RUN_DIR``): its ``final/`` (the student the run evaluated); a run that has
  not finished yet: its latest checkpoint;
- a checkpoint directory (``RUN_DIR/checkpoints/checkpoint-gs{N}``): those weights, in the
  architecture of the run's ``final/`` or, before there is one, the student the run's
  ``config.yaml`` builds;
- a Hugging Face directory (``config.json`` + safetensors): a ``final/`` or a teacher.

The corpus is read with the corpus fields (as ``eval.data`` of a run) and tokenized with the
model's tokenizer, truncated at ``max_length`` (default: the tokenizer's ``model_max_length``,
which ``final/`` sets to the length of the cache it was trained on and ``finetune`` to the length
it trained with: :func:`~cachebrew.models.recorded_max_length`; 128 when that is unset).
Predictions come from :func:`cachebrew.metrics.predict`, so a ``final/`` scores exactly what the
run's own evaluation did on the same file. Metrics: the names asked for, else every metric of
:data:`~cachebrew.metrics.TASK_METRICS` for the model's task.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cachebrew import models
from cachebrew.cache.read.reader import open_cache
from cachebrew.distill.checkpoint import (
    LATEST,
    STATE_FILE,
    STUDENT_FILE,
    load_model_weights,
)
from cachebrew.errors import ConfigError
from cachebrew.metrics import (
    IGNORE_INDEX,
    METRICS,
    lm_token_nll,
    metrics_for_task,
    perplexity,
    predict,
    score_predictions,
)
from cachebrew.models.request import ModelRequest
from cachebrew.runner.config import EvalConfig, load_distill_config
from cachebrew.runner.evaluate import check_label_range, corpus_eval_batches
from cachebrew.runner.export import FINAL_DIR
from cachebrew.runner.setup import load_student
from cachebrew.runner.tokens import DEFAULT_MAX_LENGTH, StudentTokens, resolve_student_tokens


@dataclass
class ScoredModel:
    """A model ready to score: the loaded model, its tokenizer and where its weights are."""

    loaded: models.LoadedModel
    tokenizer: Any
    weights: Path
    max_length: int | None = None


def load_for_eval(path: str | Path) -> ScoredModel:
    """Load MODEL (module docstring) in eval mode.

    Raises:
        ConfigError: a path that is none of the accepted kinds, or an unreadable model.
    """
    path = Path(path)
    if (path / FINAL_DIR / "config.json").is_file():
        path = path / FINAL_DIR
    elif (path / "checkpoints" / LATEST).is_file() and not (path / "config.json").is_file():
        latest = (path / "checkpoints" / LATEST).read_text(encoding="utf-8").strip()
        path = path / "checkpoints" / latest
    if (path / STUDENT_FILE).is_file() and (path / STATE_FILE).is_file():
        return _load_checkpoint(path)
    if (path / "config.json").is_file():
        loaded = models.load_model(path, role="teacher", request=ModelRequest())
        return ScoredModel(loaded, loaded.tokenizer, path)
    raise ConfigError(
        f"model {str(path)!r}: not a run directory (with final/ or checkpoints/), a checkpoint "
        "directory (student.safetensors) or a Hugging Face directory (config.json)"
    )


def _load_checkpoint(path: Path) -> ScoredModel:
    """A checkpoint's student weights in the architecture of its run (``final/`` or config)."""
    run_dir = path.parent.parent
    if (run_dir / FINAL_DIR / "config.json").is_file():
        loaded = models.load_model(run_dir / FINAL_DIR, role="teacher", request=ModelRequest())
        tokenizer = loaded.tokenizer
        length = None
    elif (run_dir / "config.yaml").is_file():
        cfg = load_distill_config(str(run_dir / "config.yaml"), {})
        reader = open_cache(cfg.cache)
        loaded = load_student(cfg, reader, seed=0, evaluate=True)
        tokenizer = resolve_student_tokens(cfg, reader).tokenizer
        length = int((reader.manifest.get("extra") or {}).get("max_length", DEFAULT_MAX_LENGTH))
    else:
        raise ConfigError(
            f"checkpoint {path}: no {run_dir / FINAL_DIR} or {run_dir / 'config.yaml'} to "
            "build its model from"
        )
    load_model_weights(loaded.model, path / STUDENT_FILE)
    loaded.model.eval().requires_grad_(False)
    return ScoredModel(loaded, tokenizer, path, length)


def eval_max_length(scored: ScoredModel, max_length: int | None) -> int:
    """``max_length`` if given, else the model's own (module docstring)."""
    if max_length is not None:
        return max_length
    if scored.max_length is not None:
        return scored.max_length
    return models.recorded_max_length(scored.tokenizer) or DEFAULT_MAX_LENGTH


def metric_names(task: str, asked: Sequence[str] | None) -> tuple[str, ...]:
    """The metrics to report: ``asked`` (checked) or every one that fits ``task``.

    Raises:
        ConfigError: an unknown name, or no metric fits ``task``.
    """
    if asked:
        unknown = [name for name in asked if name not in METRICS]
        if unknown:
            raise ConfigError(f"metrics: unknown {unknown}; choose from {sorted(METRICS)}")
        return tuple(asked)
    names = metrics_for_task(task)
    if not names:
        raise ConfigError(
            f"no metric fits a {task} model yet; choose --metrics from {list(METRICS)}"
        )
    return names


def score_model(
    model: str | Path,
    data: str,
    *,
    metrics: Sequence[str] | None = None,
    fields: dict[str, Any] | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    outside_label: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Score ``model`` on the labelled corpus ``data``; return the report :func:`format_report`
    prints: ``model``, ``weights``, ``task``, ``data``, ``examples``, ``max_length``,
    ``metrics`` ({name: value}), ``params``, ``examples_per_s`` (forward passes, after one
    warm-up batch). A causal LM is scored on its text alone (no label column read; its
    ``perplexity`` over every next token, padding skipped) and the report adds ``tokens``, the
    number of predicted tokens.

    Raises:
        ConfigError: a bad model path, corpus, field or metric name; no tokenizer.
    """
    scored = load_for_eval(model)
    if scored.tokenizer is None:
        raise ConfigError(f"model {model}: no tokenizer.json beside it to read {data} with")
    names = metric_names(scored.loaded.kind, metrics)
    causal = scored.loaded.kind == "causal_lm"
    if causal and names != ("perplexity",):
        raise ConfigError(f"a causal LM is scored by perplexity only, not {list(names)}")
    length = eval_max_length(scored, max_length)
    fields = {**(fields or {}), "label_field": None} if causal else fields or {}
    eval_cfg = EvalConfig(data=data, batch_size=batch_size, **fields)
    batches, count = corpus_eval_batches(eval_cfg, StudentTokens(scored.tokenizer), length)
    check_label_range(batches, scored.loaded, data)  # as finetune: no label outside the classes
    target = models.resolve_device(device)
    scored.loaded.model.to(target)
    extra: dict[str, Any] = {}
    if causal:
        start = time.perf_counter()
        nll, targets = lm_token_nll(scored.loaded.model, batches, target)
        seconds = time.perf_counter() - start
        values = {"perplexity": perplexity(nll, targets)}
        extra["tokens"] = int((targets != IGNORE_INDEX).sum())
    else:
        predictions, labels, seconds = _timed_predict(scored.loaded, batches, target)
        values = score_predictions(names, predictions, labels, outside_label=outside_label)
    return {
        "model": str(model),
        "weights": str(scored.weights),
        "task": scored.loaded.kind,
        "data": data,
        "examples": count,
        "max_length": length,
        "metrics": values,
        "params": models.count_parameters(scored.loaded.model),
        "examples_per_s": count / seconds if seconds > 0 else None,
        **extra,
    }


def _timed_predict(
    loaded: models.LoadedModel, batches: list[dict[str, Any]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, float]:
    if batches:  # warm-up: the first call's one-off costs are not the model's speed
        predict(loaded.model, loaded.adaptor, batches[:1], device)
    start = time.perf_counter()
    predictions, labels = predict(loaded.model, loaded.adaptor, batches, device)
    return predictions, labels, time.perf_counter() - start


def format_report(report: dict[str, Any]) -> str:
    """The report as a short text table (one metric per line)."""
    speed = report.get("examples_per_s")
    lines = [
        f"model    {report['weights']} ({report['task']}, {report['params']:,} params)",
        f"data     {report['data']} ({report['examples']} examples, max length "
        f"{report['max_length']}" + (f", {speed:.0f} examples/s)" if speed else ")"),
        "",
        f"{'metric':<12}value",
        *(f"{name:<12}{value:.4f}" for name, value in report["metrics"].items()),
    ]
    return "\n".join(lines)
