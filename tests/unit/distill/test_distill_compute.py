"""The micro-batch loss: masks over several heads, probability shift, T², weights, teachers."""

from __future__ import annotations

import pytest
import torch

from cachebrew import ConfigError, DistillationConfig
from cachebrew.distill.batches import adapt, move_to_device, split_batch
from cachebrew.distill.loss import (
    DistillationLoss,
    LossWeights,
    combine_teachers,
    scheduled_weights,
    select_logits_with_mask,
)
from cachebrew.losses import kd_ce_loss

WEIGHTS = LossWeights(kd_loss_weight=1.0, hard_label_weight=1.0)


def kd(config, results_S, results_T):
    """The loss on raw adaptor dicts (adapted first, as the loop does)."""
    results_S, results_T = adapt(None, None, results_S, "S"), adapt(None, None, results_T, "T")
    return DistillationLoss(config)(results_S, results_T, WEIGHTS, {})


def test_one_logits_mask_is_shared_by_several_3d_heads():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    heads = [torch.randn(2, 3, 5), torch.randn(2, 3, 7)]
    selected = select_logits_with_mask(heads, [mask])
    assert [tuple(s.shape) for s in selected] == [(3, 5), (3, 7)]
    assert torch.equal(selected[1], heads[1][mask.bool()])


def test_probability_shift_with_logits_mask_masks_the_labels():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logits_S, logits_T = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    labels = torch.tensor([[0, 3, -100], [2, -100, -100]])
    config = DistillationConfig(probability_shift=True, temperature=2)
    output = kd(
        config,
        {"logits": logits_S, "logits_mask": mask, "labels": labels},
        {"logits": logits_T.clone(), "logits_mask": mask},
    )
    shifted = logits_T[mask.bool()].clone()  # (3, 4): rows for labels 0, 3, 2
    for row, label in enumerate([0, 3, 2]):
        top = shifted[row].argmax()
        shifted[row, top], shifted[row, label] = (
            shifted[row, label].clone(),
            shifted[row, top].clone(),
        )
    expected = kd_ce_loss(logits_S[mask.bool()], shifted, 2)
    torch.testing.assert_close(output.terms["unweighted_kd_loss"], expected)


def test_probability_shift_does_not_modify_a_cached_tensor():
    logits_T = torch.tensor([[3.0, 1.0, 0.0]])
    cache = logits_T.clone()
    kd(
        DistillationConfig(probability_shift=True),
        {"logits": torch.zeros(1, 3), "labels": torch.tensor([2])},
        {"logits": cache},
    )
    assert torch.equal(cache, logits_T)


@pytest.mark.parametrize("scheduler", ["none", ("cwsm", 0.5)])
def test_t2_scaling(scheduler):
    torch.manual_seed(0)
    results_S, results_T = {"logits": torch.randn(6, 4)}, {"logits": torch.randn(6, 4)}
    plain = kd(
        DistillationConfig(temperature=3, temperature_scheduler=scheduler), results_S, results_T
    )
    scaled = kd(
        DistillationConfig(temperature=3, temperature_scheduler=scheduler, kd_t2_scale=True),
        results_S,
        results_T,
    )
    temperature = DistillationConfig(
        temperature=3, temperature_scheduler=scheduler
    ).temperature_scheduler_fn()
    tau = 3 if temperature is None else temperature(results_S["logits"], results_T["logits"], 3)
    factor = 9 if temperature is None else (tau**2).mean()
    torch.testing.assert_close(scaled.total, plain.total * factor)


def test_weight_schedule_follows_textbrewer_first_step():
    config = DistillationConfig(kd_loss_weight=0.3, kd_loss_weight_scheduler="linear_growth")
    assert [scheduled_weights(config, step, 4).kd_loss_weight for step in range(4)] == [
        0.3,
        0.25,
        0.5,
        0.75,
    ]


def test_missing_feature_and_out_of_range_layer_name_the_match():
    match = {"layer_T": 5, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    loss = DistillationLoss(DistillationConfig(intermediate_matches=[match]))
    hidden = [torch.zeros(1, 2, 3)]
    with pytest.raises(ConfigError, match=r"intermediate_matches\[0\] needs 'hidden'"):
        loss({"hidden": hidden}, {}, WEIGHTS, {})
    with pytest.raises(ConfigError, match=r"layer_T=5 is out of range"):
        loss({"hidden": hidden}, {"hidden": hidden}, WEIGHTS, {})


def test_combine_teachers_weighted_mean_and_own_masks():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask_a, mask_b = torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([[1, 0, 0], [1, 1, 0]])
    merged = combine_teachers(
        [
            {"logits": [a], "logits_mask": [mask_a], "hidden": "a"},
            {"logits": [b], "logits_mask": [mask_b]},
        ],
        [0.25, 0.75],
        match_teacher=0,
    )
    torch.testing.assert_close(
        merged["logits"][0], 0.25 * a[mask_a.bool()] + 0.75 * b[mask_b.bool()]
    )
    assert merged["hidden"] == "a" and "logits_mask" not in merged
    unweighted = combine_teachers([{"logits": [a]}, {"logits": [b]}], None, 0)
    assert torch.equal(unweighted["logits"][0], (a + b) / 2)


def test_split_batch_and_move_to_device():
    batch = {
        "teacher": {"x": torch.ones(1)},
        "student": [torch.zeros(1)],
        "teacher_cache": {"logits": 1},
    }
    split = split_batch(batch)
    assert split.teacher_cache == {"logits": 1} and split.student == [torch.zeros(1)]
    assert split_batch((1, 2)).teacher_cache is None
    assert isinstance(move_to_device([torch.ones(1)], torch.device("cpu")), tuple)
    adapted = adapt(None, None, {"logits": torch.ones(1), "losses": torch.ones(1)}, "x")
    assert isinstance(adapted["logits"], list) and isinstance(adapted["losses"], list)
