"""``cachebrew sweep --devices cuda:0,cuda:1,...``: spread a sweep's runs over devices.

Each listed device is a *slot*: as many runs train at once as there are slots (list a device
twice to run two students on it). A run takes a free slot, trains in its own subprocess pinned
to that device, and gives the slot back when it ends. Pinning is by environment, so a run's
config (and so its ``config.yaml``, which decides whether a rerun can skip it) does not depend
on where it ran:

- ``cuda:K``: ``CUDA_VISIBLE_DEVICES=K``; the run's ``training.device: auto`` (or ``cuda``)
  is then GPU K, the only one it sees.
- ``cpu``: ``CUDA_VISIBLE_DEVICES=""``; ``auto`` resolves to the CPU.

Every run gets a fair share of the CPU threads, ``os.cpu_count() // slots`` (at least 1), as
``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` (torch sizes its pool from them at start-up).
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Iterator, Sequence

import torch

from cachebrew.errors import ConfigError
from cachebrew.runner.config import DistillRunConfig
from cachebrew.validation import raise_if_any


def parse_devices(text: str) -> list[str]:
    """``"cuda:0,cuda:1"`` -> ``["cuda:0", "cuda:1"]`` (``cuda`` means ``cuda:0``).

    Raises:
        ConfigError: an empty list, a name that is neither ``cpu`` nor ``cuda:K``, or a GPU
            this machine does not have (every problem at once).
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--devices {text!r}: expected a list such as cuda:0,cuda:1 or cpu,cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices, problems = [], []
    for name in names:
        kind, _, index = name.partition(":")
        if kind == "cpu" and not index:
            devices.append("cpu")
        elif kind == "cuda" and (not index or index.isdigit()):
            gpu = int(index or 0)
            if gpu >= count:
                problems.append(f"--devices: {name}: this machine has {count} CUDA device(s)")
            devices.append(f"cuda:{gpu}")
        else:
            problems.append(f"--devices: {name!r} is not a device; use cpu or cuda:K")
    raise_if_any(problems)
    return devices


def device_slots(devices: str | None, parallel: int = 1) -> list[str] | None:
    """The slots of ``--devices`` (None without it), checked against ``--parallel``.

    Raises:
        ConfigError: a bad device list, or ``--parallel`` other than 1 or the slot count.
    """
    if devices is None:
        return None
    slots = parse_devices(devices)
    if parallel not in (1, len(slots)):
        raise ConfigError(
            f"--parallel {parallel} with --devices {devices}: the devices set how many runs "
            f"train at once ({len(slots)}); drop --parallel or list a device per run"
        )
    return slots


def check_runs_fit(configs: Sequence[DistillRunConfig], devices: Sequence[str]) -> None:
    """Each run must let the slot decide: ``training.device`` ``auto`` or the slots' kind.

    Raises:
        ConfigError: naming every run pinned to another device in its own config.
    """
    kinds = {device.partition(":")[0] for device in devices}
    problems = [
        f"run {cfg.run_dir.name}: training.device={cfg.training.device} with --devices "
        f"{','.join(devices)}; leave it auto so the sweep places the run"
        for cfg in configs
        if cfg.training.device != "auto" and cfg.training.device not in kinds
    ]
    raise_if_any(problems)


def threads_per_slot(slots: int) -> int:
    """The fair share of CPU threads of one of ``slots`` concurrent runs (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, slots))


def placement_env(device: str | None, threads: int) -> dict[str, str]:
    """Environment variables pinning a run subprocess to ``device`` (None: leave the GPUs
    alone) with ``threads`` CPU threads."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device.partition(":")[2] if device != "cpu" else ""
    return env


class DeviceSlots:
    """Free slots of a device list; :meth:`take` blocks until one is free."""

    def __init__(self, devices: Sequence[str]):
        self._free: queue.Queue[str] = queue.Queue()
        for device in devices:
            self._free.put(device)

    @contextlib.contextmanager
    def take(self) -> Iterator[str]:
        """A free device for the duration of one run."""
        device = self._free.get()
        try:
            yield device
        finally:
            self._free.put(device)
