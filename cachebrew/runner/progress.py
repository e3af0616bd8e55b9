"""Watching a distill run: the one progress bar, and the teacher-call counter.

The loop counts (:class:`~cachebrew.distill.tracking.Throughput`: examples, data wait, wall
time) and reports to its public observer hook; :class:`RunProgress` is the command layer's
observer. It draws the only progress bar of ``cachebrew distill`` (step, loss, examples/s,
data-wait share, read from the loop's counters) and routes log lines through ``tqdm.write``
while the bar is shown, so an epoch or checkpoint message never tears it.
:class:`ForwardCounter` counts real teacher forward calls with a forward hook.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, TextIO

from torch import Tensor, nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cachebrew.distill.tracking import Throughput, TrainObserver

_REFRESH_SECONDS = 0.5


class RunProgress(TrainObserver):
    """The progress bar of one run (rank 0), fed by the loop's observer hook.

    Args:
        show: draw the bar (False: only keep the last loss and the counters).
        file: where the bar goes (default ``sys.stderr``).

    Attributes:
        throughput: the loop's counters, set when training begins (None before).
        last_loss: the last micro-batch's loss (a device tensor), or None.
    """

    def __init__(self, show: bool, file: TextIO | None = None):
        self.show = show
        self.file = file
        self.throughput: Throughput | None = None
        self.last_loss: Tensor | None = None
        self.bar: Any = None
        self._redirect = contextlib.ExitStack()
        self._refreshed = 0.0

    def on_train_begin(self, total_steps: int, start_step: int, throughput: Throughput) -> None:
        """Open the bar at ``start_step`` of ``total_steps``; send log lines through it."""
        self.throughput = throughput
        if not self.show:
            return
        if _has_console_handler(logging.getLogger()):
            self._redirect.enter_context(logging_redirect_tqdm())
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            desc="distill",
            file=self.file,
        )

    def on_micro_batch(self, num_examples: int, loss: Tensor) -> None:
        """Keep the loss (no device sync here)."""
        self.last_loss = loss

    def on_step(self, step: int, lr: float) -> None:
        """Advance the bar; refresh its numbers at most every half second."""
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._refreshed >= _REFRESH_SECONDS:
            self._refreshed = now
            self.bar.set_postfix_str(self.status(), refresh=False)

    def on_train_end(self) -> None:
        """Show the final numbers (final loss), close the bar, restore logging."""
        if self.bar is not None:
            self.bar.set_postfix_str(self.status(), refresh=False)
            self.bar.close()
            self.bar = None
        self._redirect.close()

    def status(self) -> str:
        """``loss …, … ex/s, data wait …%`` (reads the loss: one device sync)."""
        loss = float(self.last_loss) if self.last_loss is not None else float("nan")
        counters = self.throughput or Throughput()
        return (
            f"loss {loss:.4f}, {counters.examples_per_s:.1f} ex/s, "
            f"data wait {100 * counters.data_wait_share:.0f}%"
        )


def _has_console_handler(logger: logging.Logger) -> bool:
    """Whether ``logger`` prints to the terminal (only then is there a line to reroute)."""
    return any(
        isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
        for handler in logger.handlers
    )


class ForwardCounter:
    """Counts forward calls of a module (the online teacher) with a forward hook."""

    def __init__(self, module: nn.Module):
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.count += 1

    def remove(self) -> None:
        """Detach the hook."""
        self._handle.remove()
