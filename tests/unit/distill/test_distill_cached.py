"""Training from teacher_cache batches is the same computation as training with a live teacher."""

from __future__ import annotations

import torch
from distill_helpers import (
    adaptor,
    assert_same_weights,
    batches,
    cached_batches,
    clone,
    general_matches,
    teacher_adaptor,
    teacher_and_student,
)

from cachebrew import DistillationConfig, GeneralDistiller, TrainingConfig


def _train(tmp_path, name, model_T, adaptor_T, student, data):
    train_config = TrainingConfig(device="cpu", output_dir=str(tmp_path / name), seed=0)
    distill_config = DistillationConfig(
        temperature=4, hard_label_weight=0.5, intermediate_matches=general_matches()
    )
    torch.manual_seed(123)  # projection init
    distiller = GeneralDistiller(train_config, distill_config, model_T, student, adaptor_T, adaptor)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    with distiller:
        distiller.train(optimizer, data, num_epochs=2)
    return distiller


def test_cached_equals_online(tmp_path):
    teacher, student = teacher_and_student()
    plain = batches(4)
    cached = cached_batches(teacher, plain)

    online = _train(tmp_path, "online", teacher, teacher_adaptor, clone(student), plain)
    offline = _train(tmp_path, "cached", None, None, clone(student), cached)

    assert len(online.loss_history) == len(offline.loss_history) == 8
    for a, b in zip(online.loss_history, offline.loss_history, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=0)
    assert_same_weights(online.model_S, offline.model_S)
    assert_same_weights(online.projections, offline.projections)
    expected_terms = {
        "total_loss",
        "unweighted_kd_loss",
        "unweighted_hidden_hidden_mse_1_2",
        "unweighted_attention_attention_mse_0_1",
        "unweighted_hidden_nst_0-2_0-2",
        "unweighted_hard_label_loss",
        "temperature",
        "lr",
        "step",
    }
    assert set(online.loss_history[0]) == expected_terms


def test_cached_batches_never_call_a_teacher(tmp_path):
    teacher, student = teacher_and_student()
    cached = cached_batches(teacher, batches(2))

    class Exploding(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("the teacher must not run on cached batches")

    distiller = _train(tmp_path, "x", Exploding(), None, student, cached)
    assert len(distiller.loss_history) == 4


def test_custom_adaptor_T_receives_teacher_batch_and_cache(tmp_path):
    teacher, student = teacher_and_student()
    plain = batches(2)
    raw = [
        {"teacher": b, "student": b, "teacher_cache": {"scores": c["teacher_cache"]["logits"]}}
        for b, c in zip(plain, cached_batches(teacher, plain), strict=True)
    ]
    calls = []

    def adaptor_T(batch, cache):
        calls.append(batch["input_ids"].shape)
        return {"logits": cache["scores"]}

    def student_adaptor(batch, outputs):
        return {"logits": outputs.logits}

    def kd_only(model_T, adaptor, data, name):
        config = TrainingConfig(device="cpu", output_dir=str(tmp_path / name))
        model = clone(student)
        distiller = GeneralDistiller(
            config, DistillationConfig(), model_T, model, adaptor, student_adaptor
        )
        distiller.train(torch.optim.SGD(model.parameters(), lr=0.1), data, num_epochs=1)
        return distiller

    online = kd_only(teacher, lambda b, o: {"logits": o.logits}, plain, "online")
    cached = kd_only(None, adaptor_T, raw, "cached")
    assert len(calls) == 2
    assert online.loss_history == cached.loss_history


def test_raw_output_adaptor_on_cached_batches_is_a_clear_error(tmp_path):
    import pytest

    from cachebrew import ConfigError

    teacher, student = teacher_and_student()
    cached = cached_batches(teacher, batches(2))

    def textbrewer_adaptor(batch, model_outputs):  # written for the model's raw tuple
        return {"logits": model_outputs[1], "hidden": model_outputs[2]}

    with pytest.raises(ConfigError, match=r"adaptor_T failed on a teacher_cache batch \(KeyError"):
        _train(tmp_path, "raw", None, textbrewer_adaptor, clone(student), cached)
