"""Evaluation metrics on predicted and gold class ids: accuracy, macro-F1, token-level F1.

Each function takes predictions and labels of the same shape (any array-like: lists, NumPy
arrays or torch tensors), flattens them and drops positions whose label is ``ignore_index``
(-100: special tokens and later sub-tokens in tagging, as in HF token classification).
Values are fractions in [0, 1]; an empty selection gives 0.0.

- :func:`accuracy`: fraction of positions where prediction == label.
- :func:`macro_f1`: unweighted mean over classes of the per-class F1 (classes seen in the labels
  or predictions, or ``range(num_classes)``); a class with no support and no prediction is
  skipped, one with no correct prediction scores 0 (scikit-learn's ``average='macro'`` with
  ``zero_division=0`` over the union of labels).
- :func:`token_f1`: micro F1 over tokens for tagging. With ``outside_label`` (the ``O`` tag of
  NER), tokens whose gold label is ``outside_label`` are negatives: precision = correct non-O
  predictions / non-O predictions, recall = correct non-O predictions / non-O gold tokens. Without
  it, every token is a positive and token F1 equals token accuracy (POS tagging). Token level,
  not entity (span) level as seqeval.
- :func:`perplexity`: ``exp`` of the mean per-token NLL (from :func:`token_nll`, the causal
  LM's shifted cross-entropy), for language models; :func:`lm_token_nll` runs a causal LM over
  batches of text and returns those NLLs with their targets.

:func:`predict` is the one argmax loop that turns a model and labelled batches into the
``(predictions, labels)`` these functions take, and :func:`evaluate_model` the one evaluation
built on it; :data:`TASK_METRICS` is the one task -> metrics table (runner eval, ``cachebrew
eval``, finetune's dev epochs, pipeline reports).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported on first use, so the metric functions stay NumPy-only
    import torch

IGNORE_INDEX = -100


def _flatten(predictions: Any, labels: Any, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Both as flat int64 arrays without the ignored positions.

    Raises:
        ValueError: predictions and labels have different shapes.
    """
    pred = np.asarray(_to_numpy(predictions), dtype=np.int64)
    gold = np.asarray(_to_numpy(labels), dtype=np.int64)
    if pred.shape != gold.shape:
        raise ValueError(f"predictions {pred.shape} and labels {gold.shape} differ in shape")
    keep = gold.reshape(-1) != ignore_index
    return pred.reshape(-1)[keep], gold.reshape(-1)[keep]


def _to_numpy(values: Any) -> Any:
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        return values.detach().cpu().numpy()
    return values


def accuracy(predictions: Any, labels: Any, *, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of (non-ignored) positions where the prediction equals the label.

    Args:
        predictions: predicted class ids, e.g. (N,) or (B, L).
        labels: gold class ids, same shape; ``ignore_index`` positions are skipped.
    """
    pred, gold = _flatten(predictions, labels, ignore_index)
    return float((pred == gold).mean()) if gold.size else 0.0


def _f1(true_positives: float, predicted: float, actual: float) -> float:
    if true_positives == 0:
        return 0.0
    precision, recall = true_positives / predicted, true_positives / actual
    return 2 * precision * recall / (precision + recall)


def macro_f1(
    predictions: Any,
    labels: Any,
    *,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Unweighted mean of the per-class F1 scores.

    Args:
        predictions, labels: class ids of the same shape.
        num_classes: average over ``range(num_classes)`` (classes absent from both are
            skipped); None: over the classes present in labels or predictions.
    """
    pred, gold = _flatten(predictions, labels, ignore_index)
    if not gold.size:
        return 0.0
    classes = np.union1d(np.unique(pred), np.unique(gold))
    if num_classes is not None:
        classes = classes[(classes >= 0) & (classes < num_classes)]
    scores = [
        _f1(float(np.sum((pred == c) & (gold == c))), np.sum(pred == c), np.sum(gold == c))
        for c in classes
    ]
    return float(np.mean(scores)) if scores else 0.0


def token_f1(
    predictions: Any,
    labels: Any,
    *,
    outside_label: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Micro F1 over tokens (see the module docstring for ``outside_label``).

    Args:
        predictions, labels: (B, L) or flat tag ids; ``ignore_index`` positions are skipped.
        outside_label: the tag id that means "no entity", or None (every token counts).
    """
    pred, gold = _flatten(predictions, labels, ignore_index)
    if outside_label is None:
        return float((pred == gold).mean()) if gold.size else 0.0
    correct = float(np.sum((pred == gold) & (gold != outside_label)))
    return _f1(correct, float(np.sum(pred != outside_label)), float(np.sum(gold != outside_label)))


def perplexity(nll: Any, labels: Any, *, ignore_index: int = IGNORE_INDEX) -> float:
    """``exp(mean negative log-likelihood)`` over the non-ignored tokens (language models).

    Args:
        nll: per-token negative log-likelihoods in nats (float), e.g. from :func:`token_nll`;
            predicted ids are refused (this metric needs the model's probabilities).
        labels: the targets, same shape; ``ignore_index`` positions are skipped.

    Raises:
        ValueError: integer ``nll`` (argmax predictions) or shapes that differ.
    """
    values = np.asarray(_to_numpy(nll))
    gold = np.asarray(_to_numpy(labels))
    if values.dtype.kind != "f" and values.size:
        raise ValueError("perplexity takes per-token NLLs (metrics.token_nll), not predicted ids")
    if values.shape != gold.shape:
        raise ValueError(f"nll {values.shape} and labels {gold.shape} differ in shape")
    keep = gold.reshape(-1) != ignore_index
    return float(np.exp(values.reshape(-1)[keep].astype(np.float64).mean())) if keep.any() else 0.0


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM per-token NLL: position t predicts token t + 1 (HF's shift), flat.

    Args:
        logits: (B, L, V); labels: (B, L) token ids, -100 where nothing is predicted.

    Returns:
        ``(nll, targets)``: (B * (L - 1),) float NLLs (0 where ignored) and the shifted labels.
    """
    import torch.nn.functional as F  # noqa: N812

    targets = labels[:, 1:].reshape(-1)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    nll = F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll, targets


def lm_token_nll(
    model: torch.nn.Module, batches: Iterable[Mapping[str, Any]], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM's flat per-token NLLs and targets over ``batches`` (:func:`token_nll`).

    Each batch holds ``input_ids`` and ``attention_mask``; the targets are the input ids
    themselves (-100 on padding), so ``perplexity(*lm_token_nll(...))`` is the model's
    perplexity on the text. The model runs in eval mode without gradients (mode restored).
    """
    import torch

    nlls, targets = [], []
    with _evaluating(model):
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = _logits(model(**inputs))
            mask = inputs["attention_mask"].bool()
            labels = inputs["input_ids"].masked_fill(~mask, IGNORE_INDEX)
            nll, kept = token_nll(logits, labels)
            nlls.append(nll.cpu())
            targets.append(kept.cpu())
    if not nlls:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(nlls), torch.cat(targets)


METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "token_f1": token_f1,
    "perplexity": perplexity,  # takes token_nll's NLLs, not predict()'s ids
}
# task -> the metrics that fit it, the first being the task's default (the one a run's
# ``metric``/``value`` report and ``keep_checkpoints`` ranks by). A metric over something other
# than argmax predictions (perplexity over the logits) adds its task here and its scorer in
# :mod:`cachebrew.runner.score`.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("accuracy", "macro_f1"),
    "token_classification": ("token_f1", "accuracy", "macro_f1"),
    "causal_lm": ("perplexity",),  # scored by lm_token_nll, not predict()
}
# metrics where a smaller value is better (the others: larger is better)
LOWER_IS_BETTER: set[str] = {"perplexity"}


def metrics_for_task(task: str) -> tuple[str, ...]:
    """The metric names that fit ``task`` (its default first); empty for an unknown task."""
    return TASK_METRICS.get(task, ())


def is_better(name: str, value: float, than: float | None) -> bool:
    """Whether ``value`` of metric ``name`` beats ``than`` (None: nothing to beat)."""
    if than is None:
        return True
    return value < than if name in LOWER_IS_BETTER else value > than


def score_predictions(
    names: Iterable[str], predictions: Any, labels: Any, *, outside_label: int | None = None
) -> dict[str, float]:
    """``{name: value}`` of each metric in ``names`` over the same predictions.

    Args:
        names: keys of :data:`METRICS`.
        predictions, labels: class ids of the same shape.
        outside_label: the ``O`` tag id, passed to ``token_f1`` only.
    """
    scores = {}
    for name in names:
        kwargs = {"outside_label": outside_label} if name == "token_f1" else {}
        scores[name] = METRICS[name](predictions, labels, **kwargs)
    return scores


def predict(
    model: torch.nn.Module,
    adaptor: Callable[[Any, Any], Mapping[str, Any]] | None,
    batches: Iterable[Mapping[str, Any]],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat predicted and gold class ids: the argmax of the logits over every batch.

    Args:
        model: called as ``model(**inputs)`` with each batch minus ``labels``, moved to
            ``device``; in eval mode and without gradients (its mode is restored afterwards).
        adaptor: ``(inputs, outputs) -> {"logits": ...}`` (a list of heads: the first is used);
            None reads ``outputs["logits"]`` / ``outputs.logits``.
        batches: Mappings of tensors, each with ``labels`` of the logits' leading shape,
            (B,) for sequence heads or (B, L) / (N_sel,) for token heads.
        device: where the inputs go; predictions and labels come back on the CPU.

    Returns:
        ``(predictions, labels)``, both flat int64 tensors of the same length (empty when
        there are no batches).
    """
    import torch

    predictions, labels = [], []
    with _evaluating(model):
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            outputs = model(**inputs)
            logits = _logits(adaptor(inputs, outputs) if adaptor else outputs)
            predictions.append(logits.argmax(dim=-1).reshape(-1).cpu())  # (B,) or (B * L,)
            labels.append(batch["labels"].reshape(-1).cpu())
    if not predictions:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(predictions), torch.cat(labels)


def evaluate_model(
    model: torch.nn.Module,
    adaptor: Callable[[Any, Any], Mapping[str, Any]] | None,
    batches: Iterable[Mapping[str, Any]],
    task: str,
    *,
    names: Iterable[str] | None = None,
    device: torch.device | str = "cpu",
    outside_label: int | None = None,
) -> dict[str, float]:
    """``{name: value}`` of a ``task`` model on labelled batches: the one evaluation of the
    runner's eval, ``cachebrew finetune``'s dev epochs and pipelines.

    Args:
        model, adaptor, batches, device: as :func:`predict` (a causal LM: as :func:`lm_token_nll`).
        task: a key of :data:`TASK_METRICS`.
        names: the metrics (keys of :data:`METRICS`); None: every one of the task's.
        outside_label: the ``O`` tag id, for ``token_f1``.

    Returns:
        a causal LM: ``{"perplexity": ...}`` over every next token; otherwise every name in
        ``names`` over the argmax predictions.
    """
    if task == "causal_lm":
        return {"perplexity": perplexity(*lm_token_nll(model, batches, device))}
    predictions, labels = predict(model, adaptor, batches, device)
    chosen = metrics_for_task(task) if names is None else tuple(names)
    return score_predictions(chosen, predictions, labels, outside_label=outside_label)


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without gradients inside the block; the model's own mode is restored after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _logits(outputs: Any) -> Any:
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
    return logits[0] if isinstance(logits, list | tuple) else logits
