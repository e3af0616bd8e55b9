"""``cachebrew finetune``: train a teacher on a labelled corpus with dev evaluation and early stopping.

The model comes from a local HF directory (a pretrained backbone such as MiniLM gets a fresh
head); training runs through :class:`~cachebrew.distill.BasicTrainer` (the model's own loss)
with AdamW, linear warmup then linear decay, and length-bucketed shuffled batches. After
every epoch (the loop's observer hook, :class:`~cachebrew.distill.tracking.TrainObserver`) the
model is evaluated on the dev file with every metric of its task in
:data:`~cachebrew.metrics.TASK_METRICS` (the table ``cachebrew eval`` and the runner use:
accuracy and macro-F1 for sequences; token F1, accuracy and macro-F1 on first sub-tokens for
tagging; perplexity for a causal LM, which trains on the next-token loss of its text and may
start from an HF config JSON with fresh weights and a separate ``tokenizer``); the best epoch's
weights are kept, and the observer stops training after ``patience`` epochs without
improvement. The best model is saved to ``out`` as an HF directory (safetensors, config with
``id2label``, the source directory's tokenizer files, ``model_max_length`` set to the
``max_length`` it trained with, which ``eval`` and ``precompute`` then use), ready to be the
teacher of ``cachebrew precompute``, with ``finetune_metrics.json`` (per-epoch dev metrics, best
epoch, seconds). The config and the
summary live in :mod:`cachebrew.teacher.finetune_config` and are re-exported here.
"""

from __future__ import annotations

import logging
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch

from cachebrew.config import TrainingConfig
from cachebrew.corpus import (
    length_bucketed_batches,
    pad_batch,
    tokenize_records,
)
from cachebrew.distill import BasicTrainer
from cachebrew.distill.tracking import TrainObserver
from cachebrew.errors import ConfigError
from cachebrew.metrics import evaluate_model, is_better
from cachebrew.models import (
    LoadedModel,
    adamw_param_groups,
    count_parameters,
    load_model,
    load_tokenizer,
    record_max_length,
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
from cachebrew.teacher.finetune_data import (
    BucketBatchSampler,
    check_vocabulary,
    label_names_of,
    read_labelled,
)

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
_CHECKPOINT_DIR = ".finetune-checkpoints"


def run_finetune(cfg: FinetuneConfig) -> FinetuneSummary:
    """Fine-tune ``cfg.model`` on ``cfg.train``, keep the best dev epoch, save it to ``cfg.out``.

    Raises:
        ConfigError: bad model, corpus fields or labels, or ``out`` holds a model already
            (without ``overwrite``).
    """
    out = Path(cfg.out)
    _check_out(out, cfg)
    train = read_labelled(cfg, cfg.train, cfg.max_train_examples)
    dev = read_labelled(cfg, cfg.dev, cfg.max_dev_examples)
    causal = cfg.task == "causal_lm"
    label_names = [] if causal else label_names_of(cfg, train, dev)
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
    check_vocabulary(cfg, loaded)
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
    record_max_length(out, loaded.tokenizer, cfg.max_length)  # eval and precompute use it
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
    pad_id = loaded.tokenizer.pad_token_id or 0
    sampler = BucketBatchSampler(
        [len(i["input_ids"]) for i in train_items], cfg.batch_size, cfg.seed
    )
    loader: Any = torch.utils.data.DataLoader(
        cast(Any, train_items), batch_sampler=sampler, collate_fn=partial(pad_batch, pad_id=pad_id)
    )
    total_steps = len(sampler) * cfg.epochs
    schedule = partial(lr_factor, warmup=int(cfg.warmup_ratio * total_steps), total=total_steps)
    # the loop saves a checkpoint at the end of the last epoch; it is not kept
    checkpoints = Path(cfg.out) / _CHECKPOINT_DIR
    train_config = TrainingConfig(
        output_dir=str(checkpoints), device=cfg.device, seed=cfg.seed,
        ckpt_epoch_frequency=cfg.epochs,
    )  # fmt: skip
    tracker = _EpochTracker(cfg, summary, loaded.model, dev_items, pad_id, len(sampler))
    optimizer = torch.optim.AdamW(adamw_param_groups(loaded.model, cfg.weight_decay), lr=cfg.lr)
    start = time.perf_counter()
    try:
        BasicTrainer(train_config, loaded.model, loaded.adaptor).train(
            optimizer,
            loader,
            num_epochs=cfg.epochs,
            scheduler_class=torch.optim.lr_scheduler.LambdaLR,
            scheduler_args={"lr_lambda": schedule},
            observer=tracker,
        )
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)
        summary.train_seconds = time.perf_counter() - start
    if tracker.best_state is None:
        raise ConfigError("training ended before the first epoch's evaluation")
    return tracker.best_state


class _EpochTracker(TrainObserver):
    """The loop's observer: at each epoch's last step evaluate on dev, remember the best
    weights, and ask the loop to stop after ``patience`` epochs without a gain."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        summary: FinetuneSummary,
        model: torch.nn.Module,
        dev_items: list[dict[str, Any]],
        pad_id: int,
        steps_per_epoch: int,
    ):
        self.cfg, self.summary, self.model, self.dev_items = cfg, summary, model, dev_items
        self.pad_id, self.steps_per_epoch = pad_id, steps_per_epoch
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_value: float | None = None
        self.epochs_without_gain = 0
        self.start = time.perf_counter()

    def on_step(self, step: int, lr: float) -> None:
        """Evaluate after the last step of an epoch."""
        if step % self.steps_per_epoch:
            return
        epoch = step // self.steps_per_epoch
        device = next(self.model.parameters()).device
        eval_start = time.perf_counter()
        metrics = evaluate(
            self.model, self.dev_items, self.cfg.task, self.cfg.eval_batch_size, self.pad_id, device
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
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
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
            self.summary.stopped_early = True

    def should_stop(self) -> bool:
        """True once ``patience`` epochs passed without a dev gain."""
        return self.summary.stopped_early


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
        every metric of ``task`` in :data:`~cachebrew.metrics.TASK_METRICS`
        (:func:`~cachebrew.metrics.evaluate_model`): sequence classification ``accuracy``,
        ``macro_f1``; token classification ``token_f1``, ``accuracy``, ``macro_f1`` over
        labelled positions (first sub-tokens; -100 skipped); causal LM ``perplexity`` over
        every next token (``items`` need no labels).
    """
    lengths = [len(item["input_ids"]) for item in items]
    batches = (
        pad_batch([items[i] for i in indices], pad_id)
        for indices in length_bucketed_batches(lengths, batch_size)
    )
    return evaluate_model(model, None, batches, task, device=device)


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
