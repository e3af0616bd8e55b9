"""Around the loop's checkpoints: evaluation during training and which checkpoints to keep.

:class:`RunMonitor` is the runner's second :class:`~cachebrew.distill.tracking.TrainObserver`
(beside the progress bar; :class:`Observers` hands every hook to both). With
``eval.every_steps: N`` it scores the student every N optimizer steps and at every checkpoint
(TensorBoard ``eval/<metric>`` through the run's one :class:`~cachebrew.distill.tracking.ScalarSink`
on RUN_DIR/tb, and the curve for ``metrics.json``). After each
checkpoint it applies ``keep_checkpoints`` (:func:`~cachebrew.distill.checkpoint.prune_checkpoints`):
the latest, then the best by the primary eval metric among the checkpoints scored in this
process, then the newest. A resumed run does not know the scores of the checkpoints it did not
write itself, so until it scores one the newest are kept.

The library loop deletes nothing: a Python user of the distillers keeps every checkpoint, as
with TextBrewer, unless they attach an observer like this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from cachebrew.distill.checkpoint import prune_checkpoints
from cachebrew.distill.tracking import ScalarSink, Throughput, TrainObserver
from cachebrew.metrics import is_better

logger = logging.getLogger(__name__)


class Observers(TrainObserver):
    """Hands every hook to each observer in order."""

    def __init__(self, observers: Sequence[TrainObserver]):
        self.observers = list(observers)

    def on_train_begin(self, total_steps: int, start_step: int, throughput: Throughput) -> None:
        """Forwarded."""
        for observer in self.observers:
            observer.on_train_begin(total_steps, start_step, throughput)

    def on_epoch(self, epoch: int) -> None:
        """Forwarded."""
        for observer in self.observers:
            observer.on_epoch(epoch)

    def on_micro_batch(self, num_examples: int, loss: Tensor) -> None:
        """Forwarded."""
        for observer in self.observers:
            observer.on_micro_batch(num_examples, loss)

    def on_step(self, step: int, lr: float) -> None:
        """Forwarded."""
        for observer in self.observers:
            observer.on_step(step, lr)

    def on_save(self, step: int, path: Path) -> None:
        """Forwarded."""
        for observer in self.observers:
            observer.on_save(step, path)

    def should_stop(self) -> bool:
        """True when any observer asks to stop (each one is asked)."""
        return any([observer.should_stop() for observer in self.observers])

    def on_train_end(self) -> None:
        """Forwarded (every observer, even when one raises)."""
        errors = []
        for observer in self.observers:
            try:
                observer.on_train_end()
            except Exception as error:  # the first is re-raised after all have closed
                errors.append(error)
        if errors:
            raise errors[0]


class RunMonitor(TrainObserver):
    """Evaluation during training and checkpoint retention (module docstring).

    Args:
        evaluate: ``() -> {metric: value}`` of the student as it is, or None (no eval).
        primary: the metric that ranks checkpoints (the first reported).
        every_steps: evaluate every this many optimizer steps (None: only at the end).
        checkpoint_dir: the loop's ``output_dir``.
        keep: ``keep_checkpoints``.
        sink: the run's one TensorBoard writer (shared with the loop) for ``eval/<metric>``,
            or None.

    Attributes:
        curve: one ``{"step": s, <metric>: value, ...}`` per evaluation during training.
    """

    def __init__(
        self,
        evaluate: Callable[[], dict[str, float]] | None,
        primary: str | None,
        every_steps: int | None,
        checkpoint_dir: str | Path,
        keep: int,
        sink: ScalarSink | None = None,
    ):
        self.evaluate, self.primary = evaluate, primary
        self.every_steps = every_steps if evaluate is not None else None
        self.checkpoint_dir, self.keep, self.sink = Path(checkpoint_dir), keep, sink
        self.curve: list[dict[str, float]] = []
        self._scores: dict[int, float] = {}  # step -> primary value
        self._saved: set[int] = set()

    def on_step(self, step: int, lr: float) -> None:
        """Evaluate when ``step`` is a multiple of ``every_steps``."""
        if self.every_steps is not None and step % self.every_steps == 0:
            self._evaluate(step)

    def on_save(self, step: int, path: Path) -> None:
        """Score the new checkpoint (with ``every_steps``), then prune to ``keep``."""
        if self.every_steps is not None and step not in self._scores:
            self._evaluate(step)
        self._saved.add(step)
        prune_checkpoints(self.checkpoint_dir, self.keep, self.best_step())

    def best_step(self) -> int | None:
        """The step of the best scored checkpoint written by this process, or None."""
        best: int | None = None
        for step in sorted(self._saved):
            value = self._scores.get(step)
            if value is not None and self.primary is not None:
                current = self._scores[best] if best is not None else None
                if is_better(self.primary, value, current):
                    best = step
        return best

    def _evaluate(self, step: int) -> None:
        assert self.evaluate is not None  # every_steps is None without an evaluator
        scores = self.evaluate()
        self.curve.append({"step": step, **scores})
        if self.primary is not None and self.primary in scores:
            self._scores[step] = scores[self.primary]
        logger.info(
            "eval at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        )
        self._write(step, scores)

    def _write(self, step: int, scores: dict[str, float]) -> None:
        if self.sink is None:
            return
        for name, value in scores.items():
            self.sink.add_scalar(f"eval/{name}", value, step)
        self.sink.flush()

    def log_final(self, step: int, scores: dict[str, float]) -> None:
        """Write the after-training scores to TensorBoard at ``step`` (if not there yet)."""
        if not self.curve or self.curve[-1]["step"] != step:
            self._write(step, scores)
