"""Full checkpoints: an interrupted run resumed from its checkpoint ends bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from distill_helpers import (
    adaptor,
    assert_same_weights,
    examples,
    general_matches,
    teacher_adaptor,
    tiny_bert,
)
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from cachebrew import DistillationConfig, GeneralDistiller, TrainingConfig
from cachebrew.distill import checkpoint as ckpt

TEACHER = tiny_bert(32, seed=0).eval()


class Interrupt(Exception):
    """Stands in for a killed job."""


def make_run(output_dir, generator_seed):
    """A fresh student (dropout 0.1), distiller, optimizer and shuffled DataLoader."""
    student = tiny_bert(16, seed=1, dropout=0.1)
    generator = (
        torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    )
    loader = DataLoader(examples(20), batch_size=4, shuffle=True, generator=generator)
    train_config = TrainingConfig(
        device="cpu",
        output_dir=str(output_dir),
        seed=0,
        gradient_accumulation_steps=2,
        ckpt_frequency=2,
        ckpt_steps=3,
    )
    distill_config = DistillationConfig(
        hard_label_weight=0.5, intermediate_matches=general_matches()
    )
    distiller = GeneralDistiller(
        train_config, distill_config, TEACHER, student, teacher_adaptor, adaptor
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    return distiller, optimizer, loader


def train(distiller, optimizer, loader, length, callback=None, resume_from=None):
    distiller.train(
        optimizer,
        loader,
        scheduler_class=torch.optim.lr_scheduler.StepLR,
        scheduler_args={"step_size": 2, "gamma": 0.5},
        callback=callback,
        resume_from=resume_from,
        **length,
    )


def interrupt_at(step):
    def callback(model, step_now):
        if step_now == step:
            raise Interrupt

    return lambda model, step: callback(model, step)


LENGTHS = {
    # 5 batches per epoch, GA=2: 2 steps per epoch (1 leftover batch), checkpoint every step;
    # stop mid-epoch (global step 3 = epoch 2, step 1) - seeded DataLoader generator.
    "epochs-seeded-generator": ({"num_epochs": 3}, 7),
    # 7 steps cycling 5-batch passes, checkpoints every 3 steps; unseeded shuffle (global RNG).
    "steps-global-rng": ({"num_steps": 7}, None),
}


@pytest.mark.parametrize("length,generator_seed", LENGTHS.values(), ids=LENGTHS.keys())
def test_resume_is_bit_identical(tmp_path, length, generator_seed):
    full, optimizer, loader = make_run(tmp_path / "full", generator_seed)
    train(full, optimizer, loader, length)

    first, optimizer, loader = make_run(tmp_path / "cut", generator_seed)
    with pytest.raises(Interrupt):
        train(first, optimizer, loader, length, callback=interrupt_at(3))
    assert (tmp_path / "cut" / "latest").read_text().strip() == "checkpoint-gs3"

    resumed, optimizer, loader = make_run(tmp_path / "cut", generator_seed)
    train(resumed, optimizer, loader, length, resume_from="latest")

    assert_same_weights(full.model_S, resumed.model_S)
    assert_same_weights(full.projections, resumed.projections)
    assert [row["step"] for row in resumed.loss_history] == list(range(4, 8))[
        : len(resumed.loss_history)
    ]
    full_tail = {row["step"]: row["total_loss"] for row in full.loss_history}
    for row in resumed.loss_history:
        assert row["total_loss"] == full_tail[row["step"]]


def test_checkpoint_layout_and_contents(tmp_path):
    distiller, optimizer, loader = make_run(tmp_path, 7)
    train(distiller, optimizer, loader, {"num_steps": 3})
    path = tmp_path / "checkpoint-gs3"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [ckpt.STUDENT_FILE, ckpt.PROJECTIONS_FILE, ckpt.TENSORS_FILE, ckpt.STATE_FILE]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    assert state["loop"]["global_step"] == 3
    assert state["source"]["position"] == 1  # 3 steps x 2 micro-batches = 5 + 1 batches
    assert state["source"]["pass_index"] == 1
    projections = load_file(str(path / ckpt.PROJECTIONS_FILE))
    assert torch.equal(projections["0.weight"], distiller.projections["0"].weight)
    tensors = torch.load(path / ckpt.TENSORS_FILE, weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng", "source"} <= set(tensors)


def test_resume_from_missing_path_is_an_error(tmp_path):
    distiller, optimizer, loader = make_run(tmp_path, 7)
    with pytest.raises(ckpt.CheckpointError, match="not a complete cachebrew checkpoint"):
        train(distiller, optimizer, loader, {"num_steps": 1}, resume_from=str(tmp_path / "nope"))


def test_resume_latest_without_checkpoint_starts_fresh(tmp_path):
    distiller, optimizer, loader = make_run(tmp_path, 7)
    train(distiller, optimizer, loader, {"num_steps": 1}, resume_from="latest")
    assert [row["step"] for row in distiller.loss_history] == [1]


def test_unfinished_checkpoint_is_never_published(tmp_path, monkeypatch):
    distiller, optimizer, loader = make_run(tmp_path, 7)

    def killed(*args, **kwargs):
        raise Interrupt

    monkeypatch.setattr(ckpt, "write_json_atomic", killed)  # the last file of a checkpoint
    with pytest.raises(Interrupt):
        train(distiller, optimizer, loader, {"num_steps": 3})
    assert not (tmp_path / "checkpoint-gs3").exists()
    assert not (tmp_path / "latest").exists()
    # An exception (unlike a kill) also removes the temporary directory.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-checkpoint-gs3")]
