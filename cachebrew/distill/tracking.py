"""Training metrics: TensorBoard scalars and an in-memory history, without per-batch syncs.

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
from typing import Any

import torch
from torch import Tensor

from cachebrew.distill.loss import LossOutput

logger = logging.getLogger(__name__)

TOTAL = "total_loss"
TEMPERATURE = "temperature"


class MetricsLogger:
    """Collects per-step metrics and writes them to TensorBoard (rank 0 only).

    Args:
        log_dir: TensorBoard directory; None writes no event file (history is still kept).
        enabled: False on non-zero ranks: nothing is collected or written.
        flush_every: optimizer steps between host transfers.

    Attributes:
        history: one dict per flushed optimizer step: ``{'step': s, 'total_loss': ...,
            <term>: ..., 'lr': ..., 'temperature': ...}``.
    """

    def __init__(self, log_dir: str | None, enabled: bool = True, flush_every: int = 20):
        self.enabled = enabled
        self.flush_every = max(1, int(flush_every))
        self.writer: Any = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir)
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._host: dict[str, float] = {}
        self._pending: list[tuple[int, dict[str, Tensor], dict[str, float]]] = []
        self._examples = 0
        self._window_start = time.perf_counter()

    def add_micro_batch(self, output: LossOutput, num_examples: int) -> None:
        """Accumulate one micro-batch's loss terms (device tensors, no sync)."""
        if not self.enabled:
            return
        self._examples += num_examples
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
        if self.writer is not None and elapsed > 0:
            last_step = self._pending[-1][0]
            rate = self._examples / elapsed
            self.writer.add_scalar("throughput/examples_per_s", rate, last_step)
        self._pending = []
        self._examples = 0
        self._window_start = time.perf_counter()

    def _write(self, step: int, row: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in row.items():
            if name != "step":
                self.writer.add_scalar(f"scalar/{name}", value, step)

    def close(self) -> None:
        """Flush, then flush and close the TensorBoard writer."""
        self.flush()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
