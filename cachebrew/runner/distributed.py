"""``torchrun ... -m cachebrew distill``: the run's DDP world (DESIGN §6).

Under torchrun (``WORLD_SIZE`` > 1) :func:`join_world` starts the process group: NCCL when
the training device is CUDA (one GPU per rank, ``cuda:LOCAL_RANK``), gloo on CPU. The loop
then wraps the student (and each projection) in ``DistributedDataParallel``; a teacher, online
or not, is never wrapped and runs locally on each rank on that rank's share of the batch.

What is per rank and what is global:

- ``batch_size`` is the global batch; each rank reads ``batch_size / N`` examples of every
  global batch of the one-process order (:mod:`cachebrew.cache.feed.global_batches`), so the data
  position in a checkpoint is a global batch index and a run resumes under any N.
- Rank 0 alone writes: checkpoints (the loop), TensorBoard, the progress bar, ``config.yaml``,
  the evaluation and ``metrics.json``. Before rank 0 evaluates, :func:`reduce_trained` makes
  the loss history the mean over ranks and the example count the sum (one collective each,
  after training, never per step).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cachebrew.config import TrainingConfig, launched_world, resolve_device
from cachebrew.distill.tracking import Throughput
from cachebrew.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, number of ranks, local rank (GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = -1

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that writes and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True with more than one rank."""
        return self.world_size > 1


def current_world() -> World:
    """The world this process joined (:func:`join_world`); a single process otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), launched_world()[2])


def join_world(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Start the process group when launched by torchrun with ``WORLD_SIZE`` > 1.

    Args:
        device: the run's ``training.device`` (``auto``, ``cpu``, ``cuda``...): CUDA means
            NCCL and ``cuda:LOCAL_RANK`` as the current device; anything else gloo.
        timeout_s: how long a collective waits for a missing rank.

    Raises:
        ConfigError: a CUDA device asked for on a machine without enough GPUs for the ranks.
    """
    rank, world_size, local_rank = launched_world()
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_world()
    on_cuda = resolve_device(device, local_rank).type == "cuda"
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun: local rank {local_rank} has no GPU ({torch.cuda.device_count()} "
                "visible); start at most one process per GPU, or set training.device=cpu"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if on_cuda else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world_size)
    logger.info("distill: rank %d of %d (%s)", rank, world_size, backend)
    return World(rank, world_size, local_rank)


def leave_world(world: World) -> None:
    """Destroy the process group this run started (nothing for a single process)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_training_config(config: TrainingConfig, world: World) -> TrainingConfig:
    """``config`` with this rank's ``local_rank`` (DDP on, ``auto`` -> ``cuda:LOCAL_RANK``)."""
    if not world.distributed:
        return config
    return dataclasses.replace(config, local_rank=max(world.local_rank, 0))


def reduce_trained(
    history: list[dict[str, float]], throughput: Throughput, world: World
) -> list[dict[str, float]]:
    """Average the loss history over ranks and sum the examples trained (in place for the
    counter); returns the averaged history. Every rank must call it (two collectives)."""
    if not world.distributed or not history:
        return history
    keys = [k for k in history[0] if k != "step"]
    # NCCL reduces CUDA tensors only; gloo CPU ones
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    rows = [[row.get(k, 0.0) for k in keys] for row in history]
    values = torch.tensor(rows, dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values /= world.world_size
    examples = torch.tensor([throughput.examples], dtype=torch.int64, device=device)
    dist.all_reduce(examples)
    throughput.examples = int(examples.item())
    averaged = [dict(zip(keys, row, strict=True)) for row in values.cpu().tolist()]
    for row, original in zip(averaged, history, strict=True):
        if "step" in original:
            row["step"] = original["step"]
    return averaged
