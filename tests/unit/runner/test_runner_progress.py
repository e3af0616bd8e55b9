"""The command layer's progress bar: one bar, final numbers, log lines routed around it."""

from __future__ import annotations

import io
import logging
import sys

import torch

from cachebrew.distill import Throughput
from cachebrew.runner.progress import RunProgress


def _train(progress: RunProgress, losses: list[float]) -> Throughput:
    counters = Throughput()
    progress.on_train_begin(len(losses), 0, counters)
    for step, loss in enumerate(losses, 1):
        counters.examples += 4
        progress.on_micro_batch(4, torch.tensor(loss))
        progress.on_step(step, 0.1)
    progress.on_train_end()
    return counters


def test_the_closed_bar_shows_the_final_loss_not_a_stale_one():
    out = io.StringIO()
    # the steps come faster than the half-second refresh: only the close shows the last loss
    _train(RunProgress(show=True, file=out), [0.9, 0.5, 0.1234])
    final = out.getvalue().rstrip().split("\r")[-1]
    assert "3/3" in final and "loss 0.1234" in final, final


def test_a_hidden_bar_writes_nothing_but_keeps_the_numbers():
    out = io.StringIO()
    progress = RunProgress(show=False, file=out)
    counters = _train(progress, [0.9, 0.5])
    assert out.getvalue() == "" and progress.bar is None
    assert progress.status().startswith("loss 0.5000") and counters.examples == 8


def test_log_lines_go_through_the_bar_while_it_is_shown():
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    root.addHandler(console)
    try:
        progress = RunProgress(show=True, file=io.StringIO())
        progress.on_train_begin(2, 0, Throughput())
        during = list(root.handlers)
        progress.on_train_end()
        after = list(root.handlers)
    finally:
        root.removeHandler(console)
    assert console not in during
    assert any("Tqdm" in type(handler).__name__ for handler in during)
    assert console in after and not any("Tqdm" in type(h).__name__ for h in after)
