"""The loop's behaviour: precision, modes, callback, repeated train(), checkpoints, syncs."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from distill_helpers import (
    adaptor,
    batches,
    cached_batches,
    clone,
    general_matches,
    teacher_adaptor,
    teacher_and_student,
    tiny_bert,
)
from transformers import BatchEncoding

import cachebrew.distill
from cachebrew import (
    BasicDistiller,
    BasicTrainer,
    ConfigError,
    DistillationConfig,
    GeneralDistiller,
    TrainingConfig,
)
from cachebrew.distill import TrainObserver
from cachebrew.distill.plan import TrainPlan
from cachebrew.distill.sources import SingleSource


def general(tmp_path, teacher, student, adaptor_T=teacher_adaptor, adaptor_S=adaptor, **train):
    train_config = TrainingConfig(device="cpu", output_dir=str(tmp_path), **train)
    distill_config = DistillationConfig(
        hard_label_weight=0.5, intermediate_matches=general_matches()
    )
    return GeneralDistiller(train_config, distill_config, teacher, student, adaptor_T, adaptor_S)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def test_bf16_trains_on_cpu(tmp_path):
    teacher, student = teacher_and_student()
    before = clone(student)
    distiller = general(tmp_path, teacher, student, bf16=True)
    distiller.train(sgd(student), batches(2), num_steps=2)
    assert all(torch.isfinite(torch.tensor(row["total_loss"])) for row in distiller.loss_history)
    assert not torch.equal(before.classifier.weight, student.classifier.weight)
    assert student.classifier.weight.dtype == torch.float32


def test_fp16_on_cpu_is_a_config_error(tmp_path):
    teacher, student = teacher_and_student()
    distiller = general(tmp_path, teacher, student, fp16=True)
    with pytest.raises(ConfigError, match="fp16.*use bf16=True"):
        distiller.train(sgd(student), batches(1), num_steps=1)


def test_adaptor_typo_is_a_config_error(tmp_path):
    teacher, student = teacher_and_student()

    def typo(batch, outputs):
        return {"logits": outputs.logits, "input_mask": batch["attention_mask"]}

    distiller = general(tmp_path, teacher, student, adaptor_S=typo)
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'input_mask' \(did you mean 'inputs_mask'\?\); valid keys: \[",
    ):
        distiller.train(sgd(student), batches(1), num_steps=1)


def test_missing_teacher_without_cache_fails_before_any_step(tmp_path):
    teacher, student = teacher_and_student()
    before = clone(student)
    distiller = general(tmp_path, None, student)
    with pytest.raises(ConfigError, match="model_T is None but the batch has no 'teacher_cache'"):
        distiller.train(sgd(student), batches(1), num_steps=1)
    assert torch.equal(before.classifier.weight, student.classifier.weight)


def test_hf_batch_encoding_batches_work(tmp_path):
    teacher, student = teacher_and_student()
    data = [BatchEncoding(dict(batch)) for batch in batches(2)]
    distiller = general(tmp_path, teacher, student)
    distiller.train(sgd(student), data, num_epochs=1)
    assert len(distiller.loss_history) == 2


def test_plain_mapping_with_teacher_cache(tmp_path):
    teacher, student = teacher_and_student()
    data = [
        {**c["student"], "teacher_cache": c["teacher_cache"]}
        for c in cached_batches(teacher, batches(2))
    ]
    distiller = general(tmp_path, None, student, adaptor_T=None)
    distiller.train(sgd(student), data, num_epochs=1)
    assert len(distiller.loss_history) == 2


def test_teacher_runs_in_eval_and_no_grad_even_without_with(tmp_path):
    teacher, student = teacher_and_student()
    teacher.train()
    seen = []
    teacher.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, torch.is_grad_enabled()))
    )
    general(tmp_path, teacher, student).train(sgd(student), batches(2), num_steps=2)
    assert seen == [(False, False), (False, False)]
    assert teacher.training  # restored


def test_callback_gets_unwrapped_student_back_in_train_mode(tmp_path):
    teacher, student = teacher_and_student()
    calls = []

    def callback(model, step):
        calls.append((model, step))
        model.eval()

    distiller = general(tmp_path, teacher, student, ckpt_frequency=2)
    with distiller:
        distiller.train(sgd(student), batches(4), num_epochs=1, callback=callback)
        assert student.training
    assert [step for _, step in calls] == [2, 4]
    assert all(model is student for model, _ in calls)


def test_train_twice_adds_projection_groups_once(tmp_path):
    teacher, student = teacher_and_student()
    distiller = general(tmp_path, teacher, student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    distiller.train(
        optimizer, batches(2), num_steps=2, scheduler_class=torch.optim.lr_scheduler.ConstantLR
    )
    distiller.train(
        optimizer, batches(2), num_steps=2, scheduler_class=torch.optim.lr_scheduler.ConstantLR
    )
    assert len(optimizer.param_groups) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-gs2", "latest"]


def test_step_mode_saves_only_at_the_end_without_ckpt_steps(tmp_path):
    teacher, student = teacher_and_student()
    general(tmp_path, teacher, student).train(sgd(student), batches(2), num_steps=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-gs5", "latest"]


def test_leftover_micro_batches_are_not_read(tmp_path):
    teacher, student = teacher_and_student()
    read = []
    distiller = general(tmp_path, teacher, student, gradient_accumulation_steps=2)
    distiller.train(
        sgd(student), batches(5), num_epochs=2, batch_postprocessor=lambda b: read.append(1) or b
    )
    assert len(read) == 8 and len(distiller.loss_history) == 4


def test_epoch_checkpoint_schedule_is_textbrewers():
    config = TrainingConfig(ckpt_frequency=2, ckpt_epoch_frequency=1)
    plan = TrainPlan.for_epochs(config, num_batches=4, num_epochs=2)
    saved = [step for step in range(1, 9) if plan.should_save(_counters(plan, step))]
    assert saved == [2, 4, 6, 8]
    every_other = TrainPlan.for_epochs(TrainingConfig(ckpt_epoch_frequency=2), 4, 3)
    saved = [step for step in range(1, 13) if every_other.should_save(_counters(every_other, step))]
    assert saved == [8, 12]


def _counters(plan, step):
    class Counters:
        global_step = step
        epoch = (step - 1) // plan.steps_per_epoch
        step_in_epoch = (step - 1) % plan.steps_per_epoch + 1

    return Counters


def test_no_host_sync_per_micro_batch(tmp_path, monkeypatch):
    teacher, student = teacher_and_student()
    cached = cached_batches(teacher, batches(2))
    calls = {"item": 0, "tolist": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            if "cachebrew" in sys._getframe(1).f_code.co_filename:
                calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    distiller = general(tmp_path, None, student, adaptor_T=None)
    distiller.train(sgd(student), cached, num_steps=30)
    assert calls == {"item": 0, "tolist": 2}  # one transfer per 20 steps, one at cleanup
    assert len(distiller.loss_history) == 30


def test_basic_trainer_and_missing_losses(tmp_path):
    model = tiny_bert(16, seed=1)
    trainer = BasicTrainer(TrainingConfig(device="cpu", output_dir=str(tmp_path)), model, adaptor)
    trainer.train(sgd(model), batches(2), num_epochs=1)
    assert set(trainer.loss_history[0]) == {"total_loss", "lr", "step"}
    no_losses = BasicTrainer(trainer.t_config, model, lambda b, o: {"logits": o.logits})
    with pytest.raises(ConfigError, match="BasicTrainer needs 'losses'"):
        no_losses.train(sgd(model), batches(1), num_epochs=1)


def test_basic_distiller_ignores_matches_and_needs_logits(tmp_path):
    teacher, student = teacher_and_student()
    train_config = TrainingConfig(device="cpu", output_dir=str(tmp_path))
    distill_config = DistillationConfig(intermediate_matches=general_matches())
    distiller = BasicDistiller(
        train_config, distill_config, teacher, student, teacher_adaptor, adaptor
    )
    distiller.train(sgd(student), batches(1), num_steps=1)
    assert set(distiller.loss_history[0]) == {
        "total_loss",
        "unweighted_kd_loss",
        "unweighted_hard_label_loss",
        "temperature",
        "lr",
        "step",
    }


def test_num_epochs_or_num_steps_required(tmp_path):
    teacher, student = teacher_and_student()
    with pytest.raises(ConfigError, match="give num_epochs or num_steps"):
        general(tmp_path, teacher, student).train(sgd(student), batches(1))


def test_ddp_single_process_gloo(tmp_path):
    teacher, student = teacher_and_student()
    store = tmp_path / "pg"
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=0, world_size=1
    )
    try:
        before = clone(student)
        distiller = general(tmp_path / "out", teacher, student, local_rank=0)
        calls = []
        distiller.train(
            sgd(student), batches(2), num_steps=2, callback=lambda model, step: calls.append(model)
        )
    finally:
        torch.distributed.destroy_process_group()
    assert calls == [student]  # unwrapped, not the DDP wrapper
    assert not torch.equal(before.classifier.weight, student.classifier.weight)
    assert (tmp_path / "out" / "checkpoint-gs2" / "student.safetensors").exists()


def test_distill_imports_no_teacher_code_path():
    import subprocess

    code = (
        "import sys, cachebrew.distill; "
        "bad = [m for m in sys.modules if m.startswith(('cachebrew.models', 'cachebrew.corpus', "
        "'cachebrew.teacher.precompute', 'transformers', 'tensorboard'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class RecordingObserver(TrainObserver):
    def __init__(self):
        self.events = []
        self.losses = []

    def on_train_begin(self, total_steps, start_step, throughput):
        self.events.append(("begin", total_steps, start_step))
        self.throughput = throughput

    def on_epoch(self, epoch):
        self.events.append(("epoch", epoch))

    def on_micro_batch(self, num_examples, loss):
        self.events.append(("micro", num_examples))
        self.losses.append(loss)

    def on_step(self, step, lr):
        self.events.append(("step", step, lr))

    def on_train_end(self):
        self.events.append(("end",))


def test_observer_gets_every_micro_batch_and_step_in_order(tmp_path):
    teacher, student = teacher_and_student()
    observer = RecordingObserver()
    distiller = general(tmp_path, teacher, student, gradient_accumulation_steps=2)
    # 5 batches of 4, GA 2: 2 steps per epoch (the 5th batch is not read), 2 epochs
    distiller.train(sgd(student), batches(5), num_epochs=2, observer=observer)

    step = [("micro", 4), ("micro", 4)]
    assert observer.events == [
        ("begin", 4, 0),
        *[("epoch", 0), *step, ("step", 1, 0.1), *step, ("step", 2, 0.1)],
        *[("epoch", 1), *step, ("step", 3, 0.1), *step, ("step", 4, 0.1)],
        ("end",),
    ]
    assert not any(loss.requires_grad for loss in observer.losses)
    per_step = torch.stack(observer.losses).view(4, 2).mean(dim=1).tolist()
    logged = [row["total_loss"] for row in distiller.loss_history]
    assert per_step == pytest.approx(logged, rel=1e-6)
    counters = observer.throughput
    assert (counters.examples, counters.micro_batches) == (32, 8)
    assert counters.finished is not None and 0 <= counters.data_wait <= counters.seconds


def test_observer_stops_training_after_a_step(tmp_path):
    """Early stopping goes through the observer (finetune's dev epochs), not an exception."""

    class StopAtTwo(RecordingObserver):
        def should_stop(self):
            return any(event[:2] == ("step", 2) for event in self.events)

    teacher, student = teacher_and_student()
    observer = StopAtTwo()
    distiller = general(tmp_path, teacher, student)
    distiller.train(sgd(student), batches(3), num_epochs=3, observer=observer)
    assert [e[1] for e in observer.events if e[0] == "step"] == [1, 2]
    assert observer.events[-1] == ("end",) and len(distiller.loss_history) == 2


def test_observer_sees_the_end_when_training_fails(tmp_path):
    teacher, student = teacher_and_student()
    observer = RecordingObserver()

    def broken(batch):
        raise RuntimeError("bad batch")

    distiller = general(tmp_path, teacher, student)
    with pytest.raises(RuntimeError, match="bad batch"):
        distiller.train(
            sgd(student), batches(2), num_steps=2, batch_postprocessor=broken, observer=observer
        )
    assert observer.events == [("begin", 2, 0), ("end",)]


def test_typed_lr_schedule_sets_every_step_and_excludes_scheduler_class(tmp_path):
    teacher, student = teacher_and_student()
    distiller = general(tmp_path, teacher, student)
    optimizer = sgd(student)
    observer = RecordingObserver()
    job = distiller.make_job(
        optimizer,
        SingleSource(batches(2)),
        TrainPlan.for_steps(distiller.t_config, 4),
        lr_schedule=lambda step: 1 / (step + 1),
        observer=observer,
    )
    distiller.run_job(job)
    lrs = [event[2] for event in observer.events if event[0] == "step"]
    assert lrs == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    assert [row["lr"] for row in distiller.loss_history] == pytest.approx(lrs)

    both = distiller.make_job(
        optimizer,
        SingleSource(batches(2)),
        TrainPlan.for_steps(distiller.t_config, 1),
        lr_schedule=lambda step: 1.0,
        scheduler_class=torch.optim.lr_scheduler.ConstantLR,
    )
    with pytest.raises(ConfigError, match="give lr_schedule or a scheduler, not both"):
        distiller.run_job(both)


def test_the_library_draws_no_progress_bar():
    # torch itself imports tqdm, so check the source: no distill module may import it
    package = Path(cachebrew.distill.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "tqdm" for name in names), path.name


def test_with_distiller_sets_and_restores_modes(tmp_path):
    teacher, student = teacher_and_student()
    student.eval()
    teacher.train()
    distiller = general(tmp_path, teacher, student)
    with distiller:
        assert student.training and not teacher.training
    assert not student.training and teacher.training
