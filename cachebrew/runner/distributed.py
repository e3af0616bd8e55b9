"""``torchrun ... -m cachebrew distill``: the run's DDP world (DESIGN §6).

The world record and the rank -> device rule are :mod:`cachebrew.world`'s, shared with
``cachebrew precompute``.

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

import torch
import torch.distributed as dist

from cachebrew.config import TrainingConfig, launched_world
from cachebrew.distill.tracking import Throughput
from cachebrew.world import World, launched, rank_device

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800.0


def current_world() -> World:
    """The world this process joined (:func:`join_world`); a single process otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), launched_world()[2], "torchrun")


def join_world(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Start the process group when launched by torchrun with ``WORLD_SIZE`` > 1.

    Args:
        device: the run's ``training.device`` (``auto``, ``cpu``, ``cuda``...): CUDA means
            NCCL and ``cuda:LOCAL_RANK`` as the current device; anything else gloo.
        timeout_s: how long a collective waits for a missing rank.

    Raises:
        ConfigError: a CUDA device asked for on a machine without enough GPUs for the ranks
            (:func:`cachebrew.world.rank_device`: no two ranks share a GPU).
    """
    world = launched()
    if not world.distributed or (dist.is_available() and dist.is_initialized()):
        return current_world()
    on_cuda = rank_device(device, world).type == "cuda"  # refuses a rank without its own GPU
    if on_cuda:
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if on_cuda else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, timeout=timeout, rank=world.rank, world_size=world.world_size)
    logger.info("distill: %s (%s)", world.label, backend)
    return world


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
