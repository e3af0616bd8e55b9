"""Accuracy, macro-F1 and token-level F1 against hand-computed values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cachebrew.metrics import METRICS, accuracy, macro_f1, predict, token_f1


def test_accuracy_counts_matches_and_skips_ignored_positions() -> None:
    assert accuracy([0, 1, 2, 1], [0, 1, 1, 1]) == pytest.approx(0.75)
    assert accuracy(torch.tensor([[1, 2, 0]]), torch.tensor([[1, -100, 2]])) == pytest.approx(0.5)
    assert accuracy([], []) == 0.0


def test_macro_f1_is_the_mean_of_per_class_f1() -> None:
    predictions = [0, 0, 1, 1, 2, 2]
    labels = [0, 1, 1, 1, 2, 0]
    # class 0: tp 1, pred 2, gold 2 -> 0.5; class 1: tp 2, pred 2, gold 3 -> 0.8;
    # class 2: tp 1, pred 2, gold 1 -> 2/3
    expected = (0.5 + 0.8 + 2 / 3) / 3
    assert macro_f1(predictions, labels) == pytest.approx(expected)
    assert macro_f1(np.array(predictions), np.array(labels), num_classes=3) == pytest.approx(
        expected
    )


def test_macro_f1_scores_a_never_predicted_class_zero() -> None:
    # class 1 is never predicted: F1 0, so the mean is (F1_0 + 0) / 2
    value = macro_f1([0, 0, 0, 0], [0, 0, 1, 1])
    assert value == pytest.approx((2 * 0.5 * 1.0 / 1.5) / 2)


def test_token_f1_without_outside_label_is_token_accuracy() -> None:
    predictions = torch.tensor([[3, 1, 2, 0], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, 1, 1, -100], [1, 2, 0, -100]])
    assert token_f1(predictions, labels) == pytest.approx(accuracy(predictions, labels))
    assert token_f1(predictions, labels) == pytest.approx(3 / 5)


def test_token_f1_with_outside_label_ignores_correct_outside_tokens() -> None:
    outside = 0
    predictions = [0, 1, 1, 2, 0, 0]
    labels = [0, 1, 2, 2, 1, 0]
    # non-O predictions: 3 (1, 1, 2), correct among them: 2; non-O gold: 4 (1, 2, 2, 1)
    precision, recall = 2 / 3, 2 / 4
    expected = 2 * precision * recall / (precision + recall)
    assert token_f1(predictions, labels, outside_label=outside) == pytest.approx(expected)
    assert token_f1([0, 0], [0, 0], outside_label=outside) == 0.0


def test_shapes_must_agree_and_metrics_are_registered_by_name() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        accuracy([0, 1], [0, 1, 2])
    assert set(METRICS) == {"accuracy", "macro_f1", "token_f1", "perplexity"}


class _TinyClassifier(torch.nn.Module):
    """Logits = embedding of the first token: the argmax is known by construction."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(4, 3)
        with torch.no_grad():
            self.table.weight.copy_(torch.eye(4, 3) * 5)  # token t -> class t (t < 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        assert not torch.is_grad_enabled() and not self.training
        return {"logits": self.table(input_ids[:, 0])}  # (B, C)


def test_predict_is_the_argmax_over_every_batch_and_restores_the_mode() -> None:
    model = _TinyClassifier().train()
    batches = [
        {"input_ids": torch.tensor([[0, 1], [2, 1]]), "attention_mask": torch.ones(2, 2),
         "labels": torch.tensor([0, 1])},
        {"input_ids": torch.tensor([[1, 0]]), "attention_mask": torch.ones(1, 2),
         "labels": torch.tensor([1])},
    ]  # fmt: skip
    pred, gold = predict(model, None, batches, "cpu")
    assert pred.tolist() == [0, 2, 1] and gold.tolist() == [0, 1, 1]
    assert accuracy(pred, gold) == pytest.approx(2 / 3)
    assert model.training  # back in train mode


def test_predict_uses_the_adaptor_first_head_and_token_labels() -> None:
    model = _TinyClassifier()

    def adaptor(inputs: dict[str, torch.Tensor], outputs: dict[str, Any]) -> dict[str, Any]:
        logits = outputs["logits"].unsqueeze(1).expand(-1, 2, -1)  # (B, L, C): token-level
        return {"logits": [-logits, logits]}  # the first head wins

    batch = {"input_ids": torch.tensor([[2, 0]]), "attention_mask": torch.ones(1, 2),
             "labels": torch.tensor([[-100, 1]])}  # fmt: skip
    pred, gold = predict(model, adaptor, [batch])
    assert pred.shape == gold.shape == (2,)
    assert gold.tolist() == [-100, 1]
    assert pred.tolist() == [0, 0]  # argmax of -logits for token 2: classes 0 and 1 tie at 0
    empty_pred, empty_gold = predict(model, None, [])
    assert empty_pred.numel() == empty_gold.numel() == 0


def test_one_task_metrics_table_for_finetune_eval_and_the_runner() -> None:
    """finetune, `cachebrew eval` and the runner read metrics.TASK_METRICS (issue 20)."""
    from cachebrew.metrics import TASK_METRICS, metrics_for_task
    from cachebrew.runner.config import EvalConfig
    from cachebrew.runner.score import metric_names
    from cachebrew.teacher.finetune_config import TASKS, FinetuneConfig

    assert TASKS == tuple(TASK_METRICS)
    for task, names in TASK_METRICS.items():
        assert set(names) <= set(METRICS)
        cfg = FinetuneConfig(model="m", train="t", dev="d", out="o", task=task)
        assert cfg.metric == names[0]
        assert metric_names(task, None) is names
        assert EvalConfig(fraction=0.5).metric_names(task) is names
        assert metrics_for_task(task) is names
