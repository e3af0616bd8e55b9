"""keep_checkpoints: prune_checkpoints keeps the latest, the best, then the newest; RunMonitor
scores checkpoints during training and prunes through the loop's on_save hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachebrew.distill.checkpoint import (
    LATEST,
    STATE_FILE,
    STUDENT_FILE,
    list_checkpoints,
    prune_checkpoints,
)
from cachebrew.errors import CheckpointError
from cachebrew.runner.monitor import RunMonitor


def _fake_checkpoints(root: Path, steps: list[int], latest: int) -> None:
    for step in steps:
        path = root / f"checkpoint-gs{step}"
        path.mkdir(parents=True)
        (path / STUDENT_FILE).write_bytes(b"")
        (path / STATE_FILE).write_text("{}")
    (root / LATEST).write_text(f"checkpoint-gs{latest}\n")


def test_prune_keeps_latest_then_best_then_newest(tmp_path: Path) -> None:
    _fake_checkpoints(tmp_path, [10, 20, 30, 40], latest=40)
    (tmp_path / "checkpoint-gs5").mkdir()  # incomplete: not cachebrew's to delete
    (tmp_path / "notes").mkdir()
    removed = prune_checkpoints(tmp_path, keep=2, best_step=10)
    assert sorted(p.name for p in removed) == ["checkpoint-gs20", "checkpoint-gs30"]
    assert sorted(list_checkpoints(tmp_path)) == [10, 40]
    assert (tmp_path / "checkpoint-gs5").is_dir() and (tmp_path / "notes").is_dir()


def test_prune_without_best_keeps_the_newest_and_always_the_latest_pointer(tmp_path: Path) -> None:
    _fake_checkpoints(tmp_path, [1, 2, 3, 4], latest=2)  # a pointer to an older one is kept
    prune_checkpoints(tmp_path, keep=3)
    assert sorted(list_checkpoints(tmp_path)) == [2, 3, 4]
    prune_checkpoints(tmp_path, keep=1, best_step=4)
    assert sorted(list_checkpoints(tmp_path)) == [2]


def test_prune_refuses_to_keep_none(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="keep=0: at least the latest"):
        prune_checkpoints(tmp_path, keep=0)


def test_monitor_scores_every_n_steps_and_each_checkpoint_then_keeps_the_best(
    tmp_path: Path,
) -> None:
    values = iter([0.5, 0.9, 0.6, 0.7, 0.4])
    monitor = RunMonitor(lambda: {"accuracy": next(values)}, "accuracy", 2, tmp_path, keep=2)
    for step in range(1, 7):
        monitor.on_step(step, 0.1)
        if step % 3 == 0:  # a checkpoint every 3 steps
            _fake_checkpoints(tmp_path, [step], latest=step)
            monitor.on_save(step, tmp_path / f"checkpoint-gs{step}")
    # evaluated at 2 (0.5), 3 (save, 0.9), 4 (0.6), 6 (0.7; the save reuses it)
    assert [row["step"] for row in monitor.curve] == [2, 3, 4, 6]
    assert monitor.best_step() == 3
    assert sorted(list_checkpoints(tmp_path)) == [3, 6]
