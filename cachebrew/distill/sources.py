"""Batch sources for the loop: one resumable stream per dataloader, and the multi-task sampler.

**Streams** read dataloaders pass after pass, with a position that a checkpoint can restore.

**Resuming mid-epoch.** A stream's state is ``(pass index, batches consumed)`` plus a snapshot,
taken just before the pass's iterator was created, of the RNGs that decide the pass's order:
torch's global CPU generator (which an unseeded ``RandomSampler`` and the DataLoader's worker
base seed draw from) and any ``torch.Generator`` attached to the DataLoader or its sampler. On
resume the stream calls ``set_epoch``, restores that snapshot, creates the iterator and skips
the consumed batches, so the resumed pass yields exactly the batches the uninterrupted run
would have; the loop then restores the checkpoint's own RNG state.

The data order of a pass must therefore be a function of that snapshot and of
``set_epoch(pass index)``, which holds for ``DataLoader(shuffle=True)`` with or without a
seeded ``generator``, for ``DistributedSampler`` and for datasets/samplers with ``set_epoch``
(the cache reader's order is a pure function of ``(seed, epoch)``). Randomness inside
``Dataset.__getitem__`` or ``collate_fn`` drawn from the *global* RNG is not replayed; derive
it from the example index instead. Skipped batches are read and dropped (their loading cost is
paid again), except for a dataloader (or its ``dataset``) with a callable ``resume_at(position)``
such as ``CacheDataset``: its order is known without reading, so after ``set_epoch`` the stream
calls ``resume_at(position)`` and the new iterator starts at that batch directly.

**Multi-task.** Task sampling for MultiTaskDistiller: which task's dataloader feeds each micro-batch.

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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from cachebrew.errors import ConfigError

logger = logging.getLogger(__name__)


def _epoch_targets(dataloader: Iterable[Any]) -> list[Any]:
    """The distinct objects of a dataloader that define ``set_epoch``."""
    candidates = [
        dataloader,
        getattr(dataloader, "sampler", None),
        getattr(dataloader, "batch_sampler", None),
        getattr(dataloader, "dataset", None),
    ]
    found: dict[int, Any] = {}
    for candidate in candidates:
        if candidate is not None and callable(getattr(candidate, "set_epoch", None)):
            found.setdefault(id(candidate), candidate)
    return list(found.values())


def _resume_target(dataloader: Iterable[Any]) -> Any:
    """The dataloader or its ``dataset`` if it can start a pass at a batch (``resume_at``)."""
    for candidate in (dataloader, getattr(dataloader, "dataset", None)):
        if candidate is not None and callable(getattr(candidate, "resume_at", None)):
            return candidate
    return None


def _generators(dataloader: Iterable[Any]) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects that decide a DataLoader's order."""
    sampler = getattr(dataloader, "sampler", None)
    candidates = [getattr(dataloader, "generator", None), getattr(sampler, "generator", None)]
    found: dict[int, torch.Generator] = {}
    for generator in candidates:
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())


class DataStream:
    """One dataloader read as consecutive passes (epochs), resumable at any batch.

    Args:
        dataloader: any iterable of batches; a ``torch.utils.data.DataLoader`` usually.
        name: used in error messages (the task name for multi-task training).
    """

    def __init__(self, dataloader: Iterable[Any], name: str = "dataloader"):
        self.dataloader = dataloader
        self.name = name
        self.pass_index = -1
        self.position = 0
        self._iterator: Iterator[Any] | None = None
        self._pass_rng: dict[str, Any] = {}

    def start_pass(self, index: int) -> None:
        """Begin pass ``index``: ``set_epoch(index)``, snapshot the order RNGs, new iterator."""
        for target in _epoch_targets(self.dataloader):
            target.set_epoch(index)
        self._pass_rng = {
            "torch": torch.get_rng_state(),
            "generators": [g.get_state() for g in _generators(self.dataloader)],
        }
        self._iterator = iter(self.dataloader)
        self.pass_index = index
        self.position = 0

    def next_batch(self) -> Any:
        """The next batch; an exhausted pass is followed by the next one (step mode cycles)."""
        if self._iterator is None:
            self.start_pass(self.pass_index + 1)
        assert self._iterator is not None
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.position == 0:
                raise ConfigError(f"{self.name} yielded no batches") from None
            self.start_pass(self.pass_index + 1)
            return self.next_batch()
        self.position += 1
        return batch

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(plain, tensors)``: pass index and position; the pass's RNG snapshot."""
        return {"pass_index": self.pass_index, "position": self.position}, dict(self._pass_rng)

    def load_state_dict(self, plain: dict[str, Any], tensors: dict[str, Any]) -> None:
        """Restore a position: replay the pass's order and skip (or ``resume_at``) the consumed
        batches."""
        if plain["pass_index"] < 0:
            return
        for target in _epoch_targets(self.dataloader):
            target.set_epoch(plain["pass_index"])
        torch.set_rng_state(tensors["torch"])
        generators = _generators(self.dataloader)
        if len(generators) != len(tensors["generators"]):
            raise ConfigError(
                f"resume: {self.name} has {len(generators)} torch.Generator(s) but the "
                f"checkpoint recorded {len(tensors['generators'])}; build it as in the first run"
            )
        for generator, state in zip(generators, tensors["generators"], strict=True):
            generator.set_state(state)
        self._pass_rng = dict(tensors)
        resumable = _resume_target(self.dataloader)
        if resumable is not None:
            resumable.resume_at(plain["position"])
        self._iterator = iter(self.dataloader)
        self.pass_index = plain["pass_index"]
        self.position = 0 if resumable is None else plain["position"]
        for _ in range(plain["position"] - self.position):
            self.next_batch()
        logger.info("%s: resumed pass %d at batch %d", self.name, self.pass_index, self.position)


class SingleSource:
    """Micro-batches from one dataloader, for the single-task distillers and BasicTrainer."""

    def __init__(self, dataloader: Iterable[Any]):
        self.stream = DataStream(dataloader)

    def begin_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from the beginning of the data (epoch mode)."""
        self.stream.start_pass(epoch)

    def next_micro_batch(self) -> tuple[Any, str | None]:
        """The next batch, with no task name."""
        return self.stream.next_batch(), None

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(plain, tensors)`` for the checkpoint."""
        return self.stream.state_dict()

    def load_state_dict(self, plain: dict[str, Any], tensors: dict[str, Any]) -> None:
        """Restore the position saved by :meth:`state_dict`."""
        self.stream.load_state_dict(plain, tensors)


def num_batches(dataloader: Iterable[Any]) -> int:
    """``len(dataloader)``, or a ConfigError explaining that epoch mode needs a length."""
    try:
        return len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            "num_epochs needs a dataloader with a length; pass num_steps to cycle a stream"
        ) from None


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
