"""Training metrics and progress: TensorBoard scalars, a history, throughput, observer hooks.

:class:`Throughput` is the one place examples, micro-batches, data wait and training wall time
are counted; :class:`MetricsLogger` (TensorBoard) and any :class:`TrainObserver` (a progress
bar, a run summary) read it. :class:`TrainObserver` is the public hook of the loop: the
command layer watches training through it instead of subclassing the distillers.


Loss terms arrive as detached tensors on the training device. They are summed on the device
for the micro-batches of an optimizer step, kept per step, and moved to the host with a single
``tolist()`` every ``flush_every`` optimizer steps (and at checkpoints and cleanup): one device
sync per flush instead of TextBrewer's ``.cpu().item()`` per loss per micro-batch (which ran
even with logging disabled).

Each optimizer step ``s`` (1-based ``global_step``) gets, under TensorBoard tags as TextBrewer's:

- ``scalar/total_loss`` and ``scalar/<term>`` for every term of the loss (``unweighted_kd_loss``,
  ``unweighted_<feature>_<loss>_<layerS>_<layerT>``, ``unweighted_hard_label_loss``): the mean
  over the step's micro-batches of the value *before* division by the accumulation steps
  (TextBrewer wrote one point per micro-batch, x-axis = micro-batch count);
- ``scalar/lr`` (first param group, the value the step used) and ``scalar/temperature``
  (mean KD temperature, when KD runs);
- ``throughput/examples_per_s`` once per flush, over the flush window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cachebrew.distill.loss import LossOutput

logger = logging.getLogger(__name__)

TOTAL = "total_loss"
TEMPERATURE = "temperature"


@dataclass
class Throughput:
    """Counters of one ``train()`` call, kept by the loop (every rank counts its own).

    Attributes:
        examples: student examples trained on.
        micro_batches: micro-batches trained on.
        data_wait: seconds the loop waited for the next micro-batch.
        started: ``time.perf_counter()`` when training (after setup) began.
        finished: ``time.perf_counter()`` when it ended, or None while it runs.
    """

    examples: int = 0
    micro_batches: int = 0
    data_wait: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        """Training wall time so far (or in total, once finished)."""
        return (self.finished or time.perf_counter()) - self.started

    @property
    def examples_per_s(self) -> float:
        """Student examples trained per second of training wall time."""
        seconds = self.seconds
        return self.examples / seconds if seconds > 0 else 0.0

    @property
    def data_wait_share(self) -> float:
        """Share of training wall time spent waiting for data."""
        seconds = self.seconds
        return self.data_wait / seconds if seconds > 0 else 0.0


class TrainObserver:
    """Hooks the loop calls while it trains; subclass and override what you need.

    Every method is a no-op here. The loop calls them on every rank (check the rank yourself
    before drawing anything), in this order: :meth:`on_train_begin`, then per optimizer step
    :meth:`on_epoch` (epoch mode, when an epoch starts), one :meth:`on_micro_batch` per
    micro-batch and :meth:`on_step`, then :meth:`on_save` when a checkpoint was written, then
    :meth:`should_stop`; :meth:`on_train_end` always follows a begin, also when training raises.
    """

    def on_train_begin(self, total_steps: int, start_step: int, throughput: Throughput) -> None:
        """Training starts at ``start_step`` (> 0 when resumed) of ``total_steps``.

        ``throughput`` is the live counter the loop updates (read it, do not write it).
        """

    def on_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) starts (epoch mode only)."""

    def on_micro_batch(self, num_examples: int, loss: Tensor) -> None:
        """One micro-batch was trained on.

        Args:
            num_examples: student examples in it.
            loss: its total loss, detached, on the training device (reading it syncs).
        """

    def on_step(self, step: int, lr: float) -> None:
        """Optimizer step ``step`` (1-based global step) ran with learning rate ``lr``."""

    def on_save(self, step: int, path: Path) -> None:
        """A full checkpoint of global step ``step`` was written to ``path`` (rank 0 only)."""

    def should_stop(self) -> bool:
        """Asked after every optimizer step (and its checkpoint): True ends training there.

        Early stopping (``cachebrew finetune``) answers through this hook instead of raising
        out of the loop; under DDP every rank must give the same answer.
        """
        return False

    def on_train_end(self) -> None:
        """Training ended (finished, stopped or raised)."""


class ScalarSink:
    """The one TensorBoard writer of a run directory: every scalar of a run goes through it.

    The loop's :class:`MetricsLogger` writes the training scalars (``scalar/``, ``throughput/``)
    and the command layer's observers (``eval/`` in :mod:`cachebrew.runner.monitor`) write
    theirs into the same event file. The writer opens on the first scalar and reopens after
    :meth:`close` (a new event file in the same directory).

    Args:
        log_dir: TensorBoard directory; None: a sink that writes nothing.
    """

    def __init__(self, log_dir: str | None):
        self.log_dir = log_dir
        self._writer: Any = None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Write one scalar (nothing without a ``log_dir``)."""
        if self.log_dir is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        self._writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        """Flush the event file to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the writer (a later scalar opens it again)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MetricsLogger:
    """Collects per-step metrics and writes them to TensorBoard (rank 0 only).

    Args:
        log_dir: TensorBoard directory; None writes no event file (history is still kept).
        enabled: False on non-zero ranks: nothing is collected or written.
        flush_every: optimizer steps between host transfers.
        throughput: the loop's counters, read for ``throughput/examples_per_s``.
        sink: write through this shared :class:`ScalarSink` (its owner closes it) instead of
            one of the logger's own for ``log_dir``.

    Attributes:
        history: one dict per flushed optimizer step: ``{'step': s, 'total_loss': ...,
            <term>: ..., 'lr': ..., 'temperature': ...}``.
    """

    def __init__(
        self,
        log_dir: str | None,
        enabled: bool = True,
        flush_every: int = 20,
        throughput: Throughput | None = None,
        sink: ScalarSink | None = None,
    ):
        self.enabled = enabled
        self.throughput = throughput if throughput is not None else Throughput()
        self.flush_every = max(1, int(flush_every))
        self._owns_sink = sink is None
        self.sink = sink if sink is not None else ScalarSink(log_dir if enabled else None)
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._host: dict[str, float] = {}
        self._pending: list[tuple[int, dict[str, Tensor], dict[str, float]]] = []
        self._window_examples = 0
        self._window_start = time.perf_counter()

    def add_micro_batch(self, output: LossOutput) -> None:
        """Accumulate one micro-batch's loss terms (device tensors, no sync)."""
        if not self.enabled:
            return
        values: dict[str, Any] = {TOTAL: output.total.detach(), **output.terms}
        if output.temperature is not None:
            values[TEMPERATURE] = output.temperature
        for name, value in values.items():
            if isinstance(value, Tensor):
                previous = self._sums.get(name)
                value = value.detach().float()
                self._sums[name] = value if previous is None else previous + value
            else:
                self._host[name] = self._host.get(name, 0.0) + float(value)
            self._counts[name] = self._counts.get(name, 0) + 1

    def end_step(self, step: int, lr: float) -> None:
        """Close optimizer step ``step``; flush every ``flush_every`` steps."""
        if not self.enabled:
            return
        means = {name: total / self._counts[name] for name, total in self._sums.items()}
        host = {name: total / self._counts[name] for name, total in self._host.items()}
        host["lr"] = float(lr)
        self._pending.append((step, means, host))
        self._sums, self._host, self._counts = {}, {}, {}
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Move pending steps to the host (one sync) and write them."""
        if not self.enabled or not self._pending:
            return
        names = [(i, name) for i, (_, means, _) in enumerate(self._pending) for name in means]
        stacked = [self._pending[i][1][name] for i, name in names]
        values = torch.stack(stacked).tolist() if stacked else []
        rows: list[dict[str, float]] = [dict(host) for _, _, host in self._pending]
        for (i, name), value in zip(names, values, strict=True):
            rows[i][name] = value
        elapsed = time.perf_counter() - self._window_start
        for (step, _, _), row in zip(self._pending, rows, strict=True):
            row["step"] = step
            self.history.append(row)
            self._write(step, row)
        if elapsed > 0:
            last_step = self._pending[-1][0]
            rate = (self.throughput.examples - self._window_examples) / elapsed
            self.sink.add_scalar("throughput/examples_per_s", rate, last_step)
        self._pending = []
        self._window_examples = self.throughput.examples
        self._window_start = time.perf_counter()

    def _write(self, step: int, row: dict[str, float]) -> None:
        for name, value in row.items():
            if name != "step":
                self.sink.add_scalar(f"scalar/{name}", value, step)

    def close(self) -> None:
        """Flush, then flush the sink (and close it when it is the logger's own)."""
        self.flush()
        self.sink.flush()
        if self._owns_sink:
            self.sink.close()
