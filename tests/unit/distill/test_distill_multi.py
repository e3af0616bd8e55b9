"""MultiTeacherDistiller and MultiTaskDistiller: training, TensorBoard tags, caches, resume."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import (
    adaptor,
    assert_same_weights,
    batches,
    cached_batches,
    clone,
    examples,
    general_matches,
    teacher_adaptor,
    tiny_bert,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from cachebrew import (
    ConfigError,
    DistillationConfig,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
    TrainingConfig,
)
from cachebrew.distill.sources import TaskSampler, sampling_probabilities

TEACHERS = [tiny_bert(32, seed=0).eval(), tiny_bert(32, seed=2).eval()]
MATCH_TAGS = {
    "scalar/unweighted_hidden_hidden_mse_1_2",
    "scalar/unweighted_attention_attention_mse_0_1",
    "scalar/unweighted_hidden_nst_0-2_0-2",
}
COMMON_TAGS = {
    "scalar/total_loss",
    "scalar/unweighted_kd_loss",
    "scalar/unweighted_hard_label_loss",
    "scalar/lr",
    "scalar/temperature",
    "throughput/examples_per_s",
}


def event_tags(log_dir) -> dict[str, list[int]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def configs(tmp_path, **train):
    train_config = TrainingConfig(
        device="cpu", output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "tb"), **train
    )
    distill_config = DistillationConfig(
        hard_label_weight=0.5, intermediate_matches=general_matches()
    )
    return train_config, distill_config


def multi_teacher(tmp_path, models, adaptor_T, data, weights):
    torch.manual_seed(5)
    student = tiny_bert(16, seed=1)
    distiller = MultiTeacherDistiller(
        *configs(tmp_path), models, student, adaptor_T, adaptor, teacher_weights=weights
    )
    with distiller:
        distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-3), data, num_steps=4)
    return distiller


def test_multi_teacher_trains_and_logs_every_term(tmp_path):
    distiller = multi_teacher(tmp_path, TEACHERS, teacher_adaptor, batches(4), [3, 1])
    tags = event_tags(tmp_path / "tb")
    assert set(tags) == COMMON_TAGS | MATCH_TAGS
    assert tags["scalar/total_loss"] == [1, 2, 3, 4]
    assert distiller.teacher_weights == [0.75, 0.25]


def test_multi_teacher_cache_is_a_list_of_teacher_outputs(tmp_path):
    plain = batches(4)
    per_teacher = [cached_batches(t, plain) for t in TEACHERS]
    cached = [
        {**a, "teacher_cache": [a["teacher_cache"], b["teacher_cache"]]}
        for a, b in zip(*per_teacher, strict=True)
    ]
    online = multi_teacher(tmp_path / "a", TEACHERS, teacher_adaptor, plain, [3, 1])
    offline = multi_teacher(tmp_path / "b", None, None, cached, [3, 1])
    assert_same_weights(online.model_S, offline.model_S)


def test_multi_teacher_with_one_weighted_teacher_is_general_distillation(tmp_path):
    data = batches(4)
    multi = multi_teacher(tmp_path / "m", TEACHERS, teacher_adaptor, data, [1, 0])
    torch.manual_seed(5)
    student = tiny_bert(16, seed=1)
    single = GeneralDistiller(
        *configs(tmp_path / "g"), TEACHERS[0], student, teacher_adaptor, adaptor
    )
    single.train(torch.optim.AdamW(student.parameters(), lr=1e-3), data, num_steps=4)
    assert multi.loss_history == single.loss_history
    assert_same_weights(multi.model_S, single.model_S)


def task_loaders():
    return {
        "a": DataLoader(examples(12, seed=1), batch_size=4, shuffle=True),
        "b": DataLoader(examples(24, seed=2), batch_size=4, shuffle=True),
    }


def multi_task(tmp_path, callback=None, resume_from=None, seen=None):
    train_config, distill_config = configs(
        tmp_path, seed=3, gradient_accumulation_steps=2, ckpt_steps=3
    )
    student = tiny_bert(16, seed=1, dropout=0.1)

    def postprocessor(task):
        def process(batch):
            if seen is not None:
                seen.append(task)
            # task b trains from a teacher cache built on the fly
            return cached_batches(TEACHERS[1], [batch])[0] if task == "b" else batch

        return process

    torch.manual_seed(5)
    distiller = MultiTaskDistiller(
        train_config,
        distill_config,
        {"a": TEACHERS[0]},  # task b trains from its teacher_cache
        student,
        {"a": teacher_adaptor},
        {"a": adaptor, "b": adaptor},
    )
    distiller.train(
        torch.optim.AdamW(student.parameters(), lr=1e-3),
        task_loaders(),
        num_steps=6,
        batch_postprocessors={task: postprocessor(task) for task in ("a", "b")},
        callback=callback,
        resume_from=resume_from,
    )
    return distiller


def test_multi_task_samples_tasks_trains_and_logs(tmp_path):
    seen = []
    distiller = multi_task(tmp_path, seen=seen)
    assert len(seen) == 12 and set(seen) == {"a", "b"}
    tags = event_tags(tmp_path / "tb")
    assert set(tags) == COMMON_TAGS | MATCH_TAGS
    assert tags["scalar/total_loss"] == [1, 2, 3, 4, 5, 6]
    assert len(distiller.loss_history) == 6


def test_multi_task_resume_is_bit_identical(tmp_path):
    full = multi_task(tmp_path / "full")

    def stop(model, step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        multi_task(tmp_path / "cut", callback=stop)
    resumed = multi_task(tmp_path / "cut", resume_from="latest")
    assert_same_weights(full.model_S, resumed.model_S)
    assert_same_weights(full.projections, resumed.projections)


def test_task_sampling_probabilities_and_seed():
    assert sampling_probabilities({"a": 10, "b": 30}, tau=1) == {"a": 0.25, "b": 0.75}
    assert sampling_probabilities({"a": 10, "b": 40}, tau=0.5) == pytest.approx(
        {"a": 1 / 3, "b": 2 / 3}
    )
    assert sampling_probabilities({"a": 10, "b": None}, tau=1) == {"a": 0.5, "b": 0.5}

    def draws(seed):
        sampler = TaskSampler({"a": 0.5, "b": 0.5}, seed=seed)
        return [sampler.sample() for _ in range(20)]

    assert draws(1) == draws(1) != draws(2)


def test_multi_task_rejects_unknown_tasks(tmp_path):
    with pytest.raises(ConfigError, match="adaptor_S lacks"):
        MultiTaskDistiller(
            *configs(tmp_path), {"c": TEACHERS[0]}, clone(TEACHERS[0]), None, {"a": adaptor}
        )
