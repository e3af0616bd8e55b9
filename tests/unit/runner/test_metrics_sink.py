"""One TensorBoard writer per run directory: the loop's scalars and the eval scores (issue 20)."""

from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cachebrew.distill.loss import LossOutput
from cachebrew.distill.tracking import MetricsLogger, ScalarSink
from cachebrew.runner.monitor import RunMonitor


def test_loop_and_monitor_share_one_event_file(tmp_path: Path) -> None:
    sink = ScalarSink(str(tmp_path / "tb"))
    logger = MetricsLogger(None, flush_every=1, sink=sink)
    monitor = RunMonitor(lambda: {"accuracy": 0.5}, "accuracy", 1, tmp_path / "ckpt", 1, sink=sink)
    for step in (1, 2):
        logger.add_micro_batch(LossOutput(torch.tensor(1.0 / step), {}, None))
        logger.end_step(step, lr=0.1)
        monitor.on_step(step, 0.1)
    logger.close()  # the sink is shared: it stays open for the final scores
    monitor.log_final(3, {"accuracy": 0.75})
    sink.close()

    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"scalar/total_loss", "scalar/lr", "eval/accuracy"} <= tags
    assert [e.step for e in events.Scalars("eval/accuracy")] == [1, 2, 3]
