"""Watching a distill run from outside the loop: progress bar, throughput, data wait, teacher calls.

The loop in :mod:`cachebrew.distill` is not modified. Instead:

- :class:`TimedBatches` wraps the dataset the distiller iterates and measures how long each
  ``next()`` takes (the time the loop waits for data);
- :class:`ObservedObjective` wraps the distiller's per-micro-batch objective and counts the
  examples and the loss of every micro-batch the loop trains on (installed by the
  ``Observed*`` distiller subclasses);
- :class:`ForwardCounter` counts real teacher forward calls with a forward hook.

:class:`TrainObserver` turns these into a tqdm bar on rank 0 (step, loss, examples/s, data-wait
share) and into the numbers of ``metrics.json``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from cachebrew.distill import BasicTrainer, GeneralDistiller
from cachebrew.distill.batches import count_examples, split_batch

#: Test hook: SIGKILL this process when the loop asks for batch N+1 (simulates a crash).
KILL_AFTER_BATCHES_ENV = "CACHEBREW_TEST_KILL_AFTER_BATCHES"
_REFRESH_SECONDS = 0.5


class TrainObserver:
    """Counts micro-batches, examples, loss and data wait; drives the progress bar.

    Args:
        total_steps: optimizer steps of the whole run.
        accumulation: micro-batches per optimizer step.
        start_step: the step a resumed run starts from.
        progress: show the bar (rank 0).
    """

    def __init__(self, total_steps: int, accumulation: int, start_step: int, progress: bool):
        self.accumulation = accumulation
        self.start_step = start_step
        self.micro_batches = 0
        self.examples = 0
        self.data_wait = 0.0
        self.last_loss: Tensor | None = None
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._refreshed = 0.0
        self.bar = tqdm(
            total=total_steps, initial=start_step, disable=not progress, unit="step", desc="distill"
        )

    @property
    def seconds(self) -> float:
        """Wall time from the start of training to :meth:`close` (or now)."""
        return (self.finished or time.perf_counter()) - self.started

    @property
    def examples_per_s(self) -> float:
        """Student examples trained per second of training wall time."""
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_share(self) -> float:
        """Share of training wall time spent waiting for the next batch."""
        return self.data_wait / self.seconds if self.seconds > 0 else 0.0

    def on_micro_batch(self, num_examples: int, loss: Tensor) -> None:
        """Record one trained micro-batch; advance the bar at each optimizer step."""
        self.micro_batches += 1
        self.examples += num_examples
        self.last_loss = loss
        if self.micro_batches % self.accumulation == 0:
            self.bar.update(1)
            now = time.perf_counter()
            if now - self._refreshed >= _REFRESH_SECONDS and not self.bar.disable:
                self._refreshed = now
                self.bar.set_postfix_str(self.status(), refresh=False)

    def status(self) -> str:
        """``loss …, … ex/s, data wait …%`` (reads the loss: one device sync)."""
        loss = float(self.last_loss) if self.last_loss is not None else float("nan")
        return (
            f"loss {loss:.4f}, {self.examples_per_s:.1f} ex/s, "
            f"data wait {100 * self.data_wait_share:.0f}%"
        )

    def close(self) -> None:
        """Stop the clock and close the bar."""
        self.finished = time.perf_counter()
        self.bar.close()


class TimedBatches:
    """A dataset as the distiller sees it: same batches, ``len`` and ``set_epoch``, timed.

    Args:
        dataset: the CacheDataset (anything iterable with ``len``).
        observer: receives the waiting time.
    """

    def __init__(self, dataset: Any, observer: TrainObserver):
        self.dataset = dataset
        self.observer = observer
        self.batches = 0
        kill_after = os.environ.get(KILL_AFTER_BATCHES_ENV)
        self._kill_after = int(kill_after) if kill_after else None

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the dataset (the loop calls it at each pass)."""
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        start = time.perf_counter()
        iterator = iter(self.dataset)
        while True:
            if self._kill_after is not None and self.batches >= self._kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.observer.data_wait += time.perf_counter() - start
            self.batches += 1
            yield batch
            start = time.perf_counter()


class ObservedObjective:
    """Delegates to the distiller's objective and reports each micro-batch to an observer."""

    def __init__(self, inner: Any, observer: TrainObserver):
        self.inner = inner
        self.observer = observer
        self._pending_examples = 0

    def forward(
        self, model: nn.Module, batch: Any, task: str | None, args: Mapping[str, Any]
    ) -> Any:
        """The wrapped forward; remembers the micro-batch's student example count."""
        self._pending_examples = count_examples(split_batch(batch).student)
        return self.inner.forward(model, batch, task, args)

    def loss(self, forwarded: Any, weights: Any, projections: Mapping[str, nn.Module]) -> Any:
        """The wrapped loss; reports it (detached, no sync) with the example count."""
        output = self.inner.loss(forwarded, weights, projections)
        self.observer.on_micro_batch(self._pending_examples, output.total.detach())
        return output


class _Observed:
    """Mixin: wraps the distiller's objective in an :class:`ObservedObjective`."""

    observer: TrainObserver | None = None

    def _objective(self) -> Any:
        inner = super()._objective()  # type: ignore[misc]
        return inner if self.observer is None else ObservedObjective(inner, self.observer)


class ObservedGeneralDistiller(_Observed, GeneralDistiller):
    """:class:`~cachebrew.distill.GeneralDistiller` reporting to ``observer``."""


class ObservedBasicTrainer(_Observed, BasicTrainer):
    """:class:`~cachebrew.distill.BasicTrainer` reporting to ``observer``."""


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
