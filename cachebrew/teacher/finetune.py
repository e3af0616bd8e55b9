"""``cachebrew finetune``: train a teacher on a labelled corpus with dev evaluation and early stopping.

The model comes from a local HF directory (a pretrained backbone such as MiniLM gets a fresh
head); training runs through :class:`~cachebrew.distill.BasicTrainer` (the model's own loss)
with AdamW, linear warmup then linear decay, and length-bucketed shuffled batches. After
every epoch the model is evaluated on the dev file (accuracy and macro-F1 for sequence
classification, token accuracy on first sub-tokens for tagging, perplexity for a causal LM,
which trains on the next-token loss of its text and may start from an HF config JSON with fresh
weights and a separate ``tokenizer``); the best epoch's weights are kept, and training stops after ``patience`` epochs without improvement. The best model is
saved to ``out`` as an HF directory (safetensors, config with ``id2label``, the source
directory's tokenizer files), ready to be the teacher of ``cachebrew precompute``, together
with ``finetune_metrics.json`` (per-epoch dev metrics, best epoch, seconds). The config and the
summary live in :mod:`cachebrew.teacher.finetune_config` and are re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch

from cachebrew.config import TrainingConfig
from cachebrew.corpus import (
    Corpus,
    length_bucketed_batches,
    pad_batch,
    read_corpus,
    tokenize_records,
)
from cachebrew.errors import ConfigError
from cachebrew.metrics import accuracy, is_better, lm_token_nll, macro_f1, perplexity, predict
from cachebrew.models import (
    LoadedModel,
    adamw_param_groups,
    count_parameters,
    load_model,
    load_tokenizer,
)
from cachebrew.models.request import ModelRequest
from cachebrew.schedules import lr_factor
from cachebrew.teacher.finetune_config import (
    METRICS_FILE,
    TASK_DEFAULTS,
    TASKS,
    FinetuneConfig,
    FinetuneSummary,
    describe_summary,
    load_finetune_config,
    write_metrics,
)

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
_CHECKPOINT_DIR = ".finetune-checkpoints"


class BucketBatchSampler:
    """Length-bucketed batches in a new seeded order each epoch (``set_epoch``).

    Args:
        lengths: token count of each example.
        batch_size: examples per batch (the last batch of a bucket order may be short).
        seed: the order of epoch ``e`` is ``length_bucketed_batches(..., seed + e)``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        return iter(length_bucketed_batches(self.lengths, self.batch_size, self.seed + self.epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


class _EarlyStop(Exception):
    """Raised from the epoch callback to leave the training loop."""


def run_finetune(cfg: FinetuneConfig) -> FinetuneSummary:
    """Fine-tune ``cfg.model`` on ``cfg.train``, keep the best dev epoch, save it to ``cfg.out``.

    Raises:
        ConfigError: bad model, corpus fields or labels, or ``out`` holds a model already
            (without ``overwrite``).
    """
    out = Path(cfg.out)
    _check_out(out, cfg)
    train = _read(cfg, cfg.train, cfg.max_train_examples)
    dev = _read(cfg, cfg.dev, cfg.max_dev_examples)
    causal = cfg.task == "causal_lm"
    label_names = [] if causal else _label_names(cfg, train, dev)
    loaded = load_model(
        cfg.model,
        task=cfg.task,
        num_labels=None if causal else len(label_names),
        role="student",
        seed=cfg.seed,
        request=ModelRequest(),  # logits and loss only, the best attention kernel
    )
    if cfg.tokenizer is not None:
        loaded.tokenizer = load_tokenizer(cfg.tokenizer)
    if loaded.tokenizer is None:
        raise ConfigError(
            f"model {cfg.model}: no tokenizer.json next to the weights; give tokenizer: (a "
            "tokenizer.json or its directory)"
        )
    _check_vocabulary(cfg, loaded)
    _quiet_outputs(loaded.model)
    words = cfg.task == "token_classification"
    train_items = tokenize_records(
        train, loaded.tokenizer, cfg.max_length, is_split_into_words=words
    )
    dev_items = tokenize_records(dev, loaded.tokenizer, cfg.max_length, is_split_into_words=words)
    if causal:  # the model learns its own tokens (HF shifts them inside the loss)
        for item in train_items:
            item["labels"] = list(item["input_ids"])
    summary = FinetuneSummary(
        out=str(out),
        task=cfg.task,
        metric=str(cfg.metric),
        label_names=label_names,
        num_train=len(train),
        num_dev=len(dev),
        num_parameters=count_parameters(loaded.model),
    )
    best_state = _train(cfg, loaded, train_items, dev_items, summary)
    loaded.model.load_state_dict(best_state)
    save_model_dir(loaded, cfg.tokenizer or cfg.model, out, label_names)
    write_metrics(out, cfg, summary, finished=True)
    logger.info("%s", describe_summary(summary))
    return summary


def _check_out(out: Path, cfg: FinetuneConfig) -> None:
    if out.resolve() == Path(cfg.model).resolve():
        raise ConfigError(f"out {out} is the model directory; choose another output directory")
    taken = [n for n in ("config.json", "model.safetensors", METRICS_FILE) if (out / n).exists()]
    if taken and not cfg.overwrite:
        raise ConfigError(
            f"out {out} already holds {taken}; pass --overwrite (overwrite: true) to replace it"
        )


def _check_vocabulary(cfg: FinetuneConfig, loaded: LoadedModel) -> None:
    """A tokenizer with more ids than the model's embedding would index out of range."""
    size = getattr(getattr(loaded.model, "config", None), "vocab_size", None)
    if size is not None and len(loaded.tokenizer) > size:
        raise ConfigError(
            f"the tokenizer has {len(loaded.tokenizer)} ids but model {cfg.model} has "
            f"vocab_size {size}; set vocab_size >= {len(loaded.tokenizer)} in its config"
        )


def _read(cfg: FinetuneConfig, path: str, limit: int | None) -> Corpus:
    """The corpus at ``path`` (a seeded subset of ``limit`` records), labels checked."""
    corpus = read_corpus(path, **cfg.corpus_fields())
    words = cfg.task == "token_classification"
    wanted = "a list of int tags per word" if words else "an int class id"
    bad = (
        []
        if cfg.task == "causal_lm"
        else [
            r.example_id
            for r in corpus
            if not (isinstance(r.label, list) if words else isinstance(r.label, int))
        ]
    )
    if bad:
        raise ConfigError(
            f"{path}: {len(bad)} records whose {cfg.label_field!r} is not {wanted} "
            f"(for task {cfg.task}), e.g. {bad[0]!r}"
        )
    if limit is not None and limit < len(corpus):
        chosen = sorted(random.Random(cfg.seed).sample(range(len(corpus)), limit))
        corpus.records = [corpus.records[i] for i in chosen]
    return corpus


def _label_names(cfg: FinetuneConfig, train: Corpus, dev: Corpus) -> list[str]:
    """Label names from ``cfg.label_names``, ``label_names.json`` beside the train file, the
    corpus' string labels, or ``num_labels`` / the largest label (names "0", "1", ...)."""
    if train.label_names != dev.label_names:
        raise ConfigError(
            f"train labels {train.label_names} and dev labels {dev.label_names} differ; write "
            "integer labels and a label_names.json"
        )
    path = Path(cfg.label_names) if cfg.label_names else Path(cfg.train).parent / "label_names.json"
    if cfg.label_names or path.is_file():
        try:
            names = [str(n) for n in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(
                f"label_names {path}: expected a JSON list of names ({error})"
            ) from error
    elif train.label_names:
        names = list(train.label_names)
    else:
        largest = max(max(_flat_labels(c), default=0) for c in (train, dev))
        names = [str(i) for i in range(cfg.num_labels or largest + 1)]
    if cfg.num_labels is not None and cfg.num_labels != len(names):
        raise ConfigError(f"num_labels={cfg.num_labels} but {len(names)} label names: {names}")
    out_of_range = sorted(
        {v for c in (train, dev) for v in _flat_labels(c) if not 0 <= v < len(names)}
    )
    if out_of_range:
        raise ConfigError(
            f"labels {out_of_range[:10]} out of range for {len(names)} labels {names}"
        )
    return names


def _flat_labels(corpus: Corpus) -> list[Any]:
    return [v for r in corpus for v in (r.label if isinstance(r.label, list) else [r.label])]


def _quiet_outputs(model: torch.nn.Module) -> None:
    """Fine-tuning needs only logits and loss: skip returning every layer's states."""
    config = getattr(model, "config", None)
    if config is not None:
        config.output_hidden_states = False
        config.output_attentions = False


def _train(
    cfg: FinetuneConfig,
    loaded: LoadedModel,
    train_items: list[dict[str, Any]],
    dev_items: list[dict[str, Any]],
    summary: FinetuneSummary,
) -> dict[str, torch.Tensor]:
    """Run BasicTrainer epochs with dev evaluation; return the best epoch's state dict."""
    from cachebrew.distill import BasicTrainer

    pad_id = loaded.tokenizer.pad_token_id or 0
    sampler = BucketBatchSampler(
        [len(i["input_ids"]) for i in train_items], cfg.batch_size, cfg.seed
    )
    loader: Any = torch.utils.data.DataLoader(
        cast(Any, train_items), batch_sampler=sampler, collate_fn=partial(pad_batch, pad_id=pad_id)
    )
    total_steps = len(sampler) * cfg.epochs
    schedule = partial(lr_factor, warmup=int(cfg.warmup_ratio * total_steps), total=total_steps)
    checkpoints = Path(cfg.out) / _CHECKPOINT_DIR  # the loop saves every epoch; not kept
    train_config = TrainingConfig(output_dir=str(checkpoints), device=cfg.device, seed=cfg.seed)
    tracker = _EpochTracker(cfg, summary, dev_items, pad_id, len(sampler), checkpoints)
    optimizer = torch.optim.AdamW(adamw_param_groups(loaded.model, cfg.weight_decay), lr=cfg.lr)
    start = time.perf_counter()
    try:
        BasicTrainer(train_config, loaded.model, loaded.adaptor).train(
            optimizer,
            loader,
            num_epochs=cfg.epochs,
            scheduler_class=torch.optim.lr_scheduler.LambdaLR,
            scheduler_args={"lr_lambda": schedule},
            callback=tracker,
        )
    except _EarlyStop:
        summary.stopped_early = True
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)
        summary.train_seconds = time.perf_counter() - start
    if tracker.best_state is None:
        raise ConfigError("training ended before the first epoch's evaluation")
    return tracker.best_state


class _EpochTracker:
    """The epoch-end callback: evaluate, remember the best weights, stop after ``patience``."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        summary: FinetuneSummary,
        dev_items: list[dict[str, Any]],
        pad_id: int,
        steps_per_epoch: int,
        checkpoints: Path,
    ):
        self.cfg, self.summary, self.dev_items = cfg, summary, dev_items
        self.pad_id, self.steps_per_epoch, self.checkpoints = pad_id, steps_per_epoch, checkpoints
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_value: float | None = None
        self.epochs_without_gain = 0
        self.start = time.perf_counter()

    def __call__(self, model: torch.nn.Module, step: int) -> None:
        for old in self.checkpoints.glob("checkpoint-gs*"):
            shutil.rmtree(old, ignore_errors=True)
        epoch = step // self.steps_per_epoch
        device = next(model.parameters()).device
        eval_start = time.perf_counter()
        metrics = evaluate(
            model, self.dev_items, self.cfg.task, self.cfg.eval_batch_size, self.pad_id, device
        )
        value = metrics[str(self.cfg.metric)]
        improved = is_better(str(self.cfg.metric), value, self.best_value)
        self.summary.epochs.append(
            {
                "epoch": epoch,
                "step": step,
                "dev": metrics,
                "eval_seconds": round(time.perf_counter() - eval_start, 2),
                "elapsed_seconds": round(time.perf_counter() - self.start, 2),
            }
        )
        if improved:
            self.best_value, self.epochs_without_gain = value, 0
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
            self.summary.best_epoch = epoch
        else:
            self.epochs_without_gain += 1
        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        logger.info("epoch %d: dev %s%s", epoch, text, " (best)" if improved else "")
        write_metrics(Path(self.cfg.out), self.cfg, self.summary, finished=False)
        if self.epochs_without_gain >= self.cfg.patience and epoch < self.cfg.epochs:
            logger.info(
                "early stop: no dev %s gain in %d epochs", self.cfg.metric, self.cfg.patience
            )
            raise _EarlyStop


def evaluate(
    model: torch.nn.Module,
    items: list[dict[str, Any]],
    task: str,
    batch_size: int,
    pad_id: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Dev metrics of ``model`` on tokenized ``items`` (with ``labels``).

    Returns:
        sequence classification: ``accuracy``, ``macro_f1``; token classification:
        ``token_accuracy`` over labelled positions (first sub-tokens; -100 skipped); causal
        LM: ``perplexity`` over every next token (``items`` need no labels).
    """
    lengths = [len(item["input_ids"]) for item in items]
    batches = (
        pad_batch([items[i] for i in indices], pad_id)
        for indices in length_bucketed_batches(lengths, batch_size)
    )
    if task == "causal_lm":
        return {"perplexity": perplexity(*lm_token_nll(model, batches, device))}
    pred, gold = predict(model, None, batches, device)
    if task == "token_classification":
        return {"token_accuracy": accuracy(pred, gold)}
    return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold)}


def save_model_dir(loaded: LoadedModel, source: str, out: Path, label_names: list[str]) -> None:
    """Save the model (safetensors, ``id2label`` when it has labels) and copy the tokenizer
    files of ``source``: a directory, or a tokenizer JSON file (saved as ``tokenizer.json``,
    with the other tokenizer files of its folder, which :func:`load_tokenizer` reads too)."""
    model: Any = loaded.model
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    path = Path(source)
    folder = path.parent if path.is_file() else path
    files = {name: folder / name for name in TOKENIZER_FILES}
    if path.is_file():
        files["tokenizer.json"] = path
    for name, file in files.items():
        if file.is_file():
            shutil.copy(file, out / name)


__all__ = [
    "METRICS_FILE",
    "TASKS",
    "TASK_DEFAULTS",
    "BucketBatchSampler",
    "FinetuneConfig",
    "FinetuneSummary",
    "describe_summary",
    "evaluate",
    "load_finetune_config",
    "run_finetune",
    "save_model_dir",
    "write_metrics",
]
