"""Task sampling for MultiTaskDistiller: which task's dataloader feeds each micro-batch.

As TextBrewer, a task is drawn independently for **every micro-batch**, so with gradient
accumulation one optimizer step may mix tasks (the gradient is then an estimate of the
size-weighted multi-task objective, like the single-task one). Differences:

- the probability of task ``d`` is ``size_d ** tau / sum(size ** tau)`` where ``size`` is the
  number of *examples* (``len(dataloader.dataset)``, the default, as TextBrewer's docstring
  says) or of *batches* (``size='batches'``, what TextBrewer's code does);
- if any size is unknown, tasks are sampled uniformly (TextBrewer too);
- draws come from a ``numpy.random.Generator`` seeded with ``TrainingConfig.seed`` (not the
  global NumPy RNG), and its state is saved in checkpoints, so a resumed run draws the same
  tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cachebrew.distill.data import DataStream
from cachebrew.errors import ConfigError

logger = logging.getLogger(__name__)

SIZES = ("examples", "batches")


def task_size(dataloader: Iterable[Any], size: str) -> int | None:
    """Number of examples or batches of a task's dataloader, or None if unknown."""
    try:
        if size == "examples":
            return len(dataloader.dataset)  # type: ignore[attr-defined]
        return len(dataloader)  # type: ignore[arg-type]
    except (AttributeError, TypeError):
        return None


def sampling_probabilities(sizes: Mapping[str, int | None], tau: float) -> dict[str, float]:
    """``p_d = size_d**tau / sum(size**tau)``; uniform if any size is unknown."""
    if any(value is None for value in sizes.values()):
        logger.info("the size of some tasks is unknown: sampling tasks uniformly")
        return {name: 1 / len(sizes) for name in sizes}
    powered = {name: float(value or 0) ** tau for name, value in sizes.items()}
    total = sum(powered.values())
    if total <= 0:
        raise ConfigError(f"multi-task sizes must not all be empty, got {dict(sizes)}")
    return {name: value / total for name, value in powered.items()}


class TaskSampler:
    """Draws task names with fixed probabilities from a seeded NumPy generator.

    Args:
        probabilities: task name -> probability (summing to 1).
        seed: seed of the generator (None: fresh entropy; the state is still checkpointed).
    """

    def __init__(self, probabilities: Mapping[str, float], seed: int | None):
        self.names = list(probabilities)
        self.probabilities = np.asarray([probabilities[name] for name in self.names])
        self.rng = np.random.default_rng(seed)

    def sample(self) -> str:
        """One task name."""
        return self.names[int(self.rng.choice(len(self.names), p=self.probabilities))]

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (JSON-able)."""
        return dict(self.rng.bit_generator.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator's state."""
        self.rng.bit_generator.state = state


class MultiTaskSource:
    """Micro-batches from several dataloaders, one sampled task per micro-batch (step mode).

    Args:
        dataloaders: task name -> dataloader; each is cycled independently.
        tau: sampling temperature on the task sizes.
        size: ``'examples'`` or ``'batches'``.
        seed: seed of the task sampler.
    """

    def __init__(
        self,
        dataloaders: Mapping[str, Iterable[Any]],
        tau: float,
        size: str,
        seed: int | None,
    ):
        if not dataloaders:
            raise ConfigError("MultiTaskDistiller.train: dataloaders is empty")
        if size not in SIZES:
            raise ConfigError(f"size: expected one of {list(SIZES)}, got {size!r}")
        sizes = {name: task_size(loader, size) for name, loader in dataloaders.items()}
        probabilities = sampling_probabilities(sizes, tau)
        logger.info("task sampling probabilities: %s", probabilities)
        self.sampler = TaskSampler(probabilities, seed)
        self.streams = {name: DataStream(loader, name) for name, loader in dataloaders.items()}

    def begin_epoch(self, epoch: int) -> None:
        """Multi-task training has no epochs (TextBrewer: steps only)."""
        raise ConfigError("MultiTaskDistiller trains by num_steps only")

    def next_micro_batch(self) -> tuple[Any, str]:
        """A task drawn by the sampler, and the next batch of that task."""
        task = self.sampler.sample()
        return self.streams[task].next_batch(), task

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(plain, tensors)``: sampler state and every task's stream position."""
        plain: dict[str, Any] = {"sampler": self.sampler.state_dict(), "streams": {}}
        tensors: dict[str, Any] = {}
        for name, stream in self.streams.items():
            plain["streams"][name], tensors[name] = stream.state_dict()
        return plain, tensors

    def load_state_dict(self, plain: dict[str, Any], tensors: dict[str, Any]) -> None:
        """Restore the sampler and every task's position."""
        if set(plain["streams"]) != set(self.streams):
            raise ConfigError(
                f"resume: the checkpoint has tasks {sorted(plain['streams'])}, this run "
                f"{sorted(self.streams)}"
            )
        for name, stream in self.streams.items():
            stream.load_state_dict(plain["streams"][name], tensors[name])
        self.sampler.load_state_dict(plain["sampler"])
