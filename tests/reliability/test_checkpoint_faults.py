"""Checkpoint faults: a corrupt or truncated latest checkpoint, and a full disk while saving.

``resume_from='latest'`` (``--resume``) falls back to the newest older readable checkpoint
with a warning naming both, or fails with one clear error when none is kept; a save that runs
out of space leaves the previous checkpoint and ``latest`` as they were.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from distill_helpers import adaptor, batches, teacher_adaptor, teacher_and_student
from reliability_helpers import small_tmpfs

import cachebrew
from cachebrew.distill import checkpoint as ckpt
from cachebrew.errors import CheckpointError


def train(output_dir: Path, num_steps: int, resume_from: str | None = None) -> torch.nn.Module:
    """A tiny BasicDistiller run saving every step; returns the student."""
    teacher, student = teacher_and_student()
    train_config = cachebrew.TrainingConfig(
        device="cpu", output_dir=str(output_dir), ckpt_steps=1, seed=0
    )
    distiller = cachebrew.BasicDistiller(
        train_config, cachebrew.DistillationConfig(), teacher, student, teacher_adaptor, adaptor
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    distiller.train(optimizer, batches(4), num_steps=num_steps, resume_from=resume_from)
    return student


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def flip_middle_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def bad_json(file: Path) -> None:
    file.write_text('{"loop": ')


DAMAGE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated student": (ckpt.STUDENT_FILE, truncate),
    "truncated training state": (ckpt.TENSORS_FILE, truncate),
    "flipped byte in the training state": (ckpt.TENSORS_FILE, flip_middle_byte),
    "trainer state not JSON": (ckpt.STATE_FILE, bad_json),
}


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    train(out, 2)
    assert (out / ckpt.LATEST).read_text().strip() == "checkpoint-gs2"
    return out


@pytest.mark.parametrize("damage", DAMAGE, ids=DAMAGE)
def test_a_damaged_latest_falls_back_to_the_previous_with_a_warning(
    two_checkpoints: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    name, corrupt = DAMAGE[damage]
    corrupt(out / "checkpoint-gs2" / name)
    with caplog.at_level(logging.WARNING, logger="cachebrew.distill.checkpoint"):
        assert ckpt.resolve_checkpoint("latest", str(out)) == out / "checkpoint-gs1"
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert str(out / "checkpoint-gs2") in warning[0] and str(out / "checkpoint-gs1") in warning[0]
    assert name in warning[0]


def test_resuming_past_a_damaged_latest_retrains_the_same_step(
    two_checkpoints: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    original = (out / "checkpoint-gs2" / ckpt.STUDENT_FILE).read_bytes()
    truncate(out / "checkpoint-gs2" / ckpt.STUDENT_FILE)
    train(out, 2, resume_from="latest")  # from gs1: step 2 again, bit for bit
    assert (out / "checkpoint-gs2" / ckpt.STUDENT_FILE).read_bytes() == original
    assert ckpt.unreadable_reason(out / "checkpoint-gs2") is None


def test_a_damaged_only_checkpoint_is_one_clear_error(
    two_checkpoints: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    shutil.rmtree(out / "checkpoint-gs1")
    truncate(out / "checkpoint-gs2" / ckpt.STUDENT_FILE)
    with pytest.raises(CheckpointError, match="no older readable checkpoint is kept"):
        train(out, 2, resume_from="latest")


# ------------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path: Path, two_checkpoints: Path) -> Iterator[Path]:
    """A tmpfs with room for one checkpoint and not two, or skip where we cannot mount."""
    one = sum(f.stat().st_size for f in (two_checkpoints / "checkpoint-gs1").iterdir())
    with small_tmpfs(tmp_path / "small", int(one * 1.5) // 1024) as mount_point:
        yield mount_point


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_latest(
    small_disk: Path,
) -> None:
    out = small_disk / "out"
    with pytest.raises(CheckpointError, match="latest still names checkpoint-gs1") as caught:
        train(out, 2)
    assert "KiB free on its filesystem" in str(caught.value)
    assert (out / ckpt.LATEST).read_text().strip() == "checkpoint-gs1"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-gs1", ckpt.LATEST]
    assert ckpt.unreadable_reason(out / "checkpoint-gs1") is None
    assert ckpt.resolve_checkpoint("latest", str(out)) == out / "checkpoint-gs1"
