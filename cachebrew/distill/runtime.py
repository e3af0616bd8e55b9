"""Process-level plumbing for the loop: ranks, seeds, RNG snapshots, precision, DDP.

Nothing here knows about distillation; the runner in :mod:`cachebrew.distill.loop` calls these
helpers during ``setup`` and ``save_checkpoint``.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from cachebrew.config import TrainingConfig
from cachebrew.errors import ConfigError

logger = logging.getLogger(__name__)


def is_distributed(config: TrainingConfig) -> bool:
    """True when this process is one rank of an initialised DDP job (``local_rank >= 0``)."""
    return (
        config.local_rank >= 0
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    )


def global_rank(config: TrainingConfig) -> int:
    """The global rank of this process; 0 outside DDP."""
    return torch.distributed.get_rank() if is_distributed(config) else 0


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ------------------------------------------------------------------------------- RNG states
# A snapshot is split in two: JSON-able values (Python and NumPy states) and tensors (torch
# states), so checkpoints hold no pickle that needs arbitrary code on read.


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """Snapshot the global RNGs.

    Returns:
        ``(plain, tensors)``: ``plain`` holds the Python and NumPy states as JSON-able lists,
        ``tensors`` the torch CPU state and one state per CUDA device.
    """
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    plain = {
        "python": [version, list(py_state), gauss],
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return plain, tensors


def restore_rng(plain: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Restore the global RNGs from a :func:`capture_rng` snapshot."""
    version, py_state, gauss = plain["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


# ------------------------------------------------------------------------------- precision


class Precision:
    """Mixed precision with ``torch.amp``: an autocast context and a gradient scaler.

    - ``bf16``: ``torch.autocast(device.type, torch.bfloat16)``; works on CPU and CUDA, no
      scaler needed.
    - ``fp16``: ``torch.autocast('cuda', torch.float16)`` with a ``GradScaler``. CUDA only:
      on CPU it raises :class:`ConfigError` (CPU float16 kernels are slow and partial, and a
      silent fall-back to fp32 would hide the mistake) and suggests ``bf16``.
    - neither: plain fp32; the scaler is disabled and passes calls straight through.

    Args:
        config: the training config (``fp16``, ``bf16``).
        device: the resolved training device.

    Raises:
        ConfigError: ``fp16`` on a non-CUDA device.
    """

    def __init__(self, config: TrainingConfig, device: torch.device):
        if config.fp16 and device.type != "cuda":
            raise ConfigError(
                f"fp16: float16 mixed precision needs a CUDA device, training runs on "
                f"{device}; use bf16=True for mixed precision on CPU"
            )
        self.device = device
        self.dtype = torch.float16 if config.fp16 else torch.bfloat16 if config.bf16 else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=bool(config.fp16))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forwards run in (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


# --------------------------------------------------------------------------------- modules


def wrap_student(student: nn.Module, config: TrainingConfig, device: torch.device) -> nn.Module:
    """Wrap the student for data parallelism; the teacher is never wrapped.

    DDP when ``torch.distributed`` is initialised and ``local_rank >= 0`` (``device_ids`` only
    on CUDA, so gloo on CPU works); ``nn.DataParallel`` for ``data_parallel=True`` on more
    than one GPU; otherwise the student itself.
    """
    if is_distributed(config):
        device_ids = [device.index if device.index is not None else config.local_rank]
        return nn.parallel.DistributedDataParallel(
            student,
            device_ids=device_ids if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    if config.data_parallel:
        if device.type == "cuda" and torch.cuda.device_count() > 1:
            return nn.DataParallel(student)
        logger.warning("data_parallel=True ignored: it needs more than one CUDA device")
    return student


def wrap_projections(
    projections: nn.ModuleDict, config: TrainingConfig, device: torch.device
) -> dict[str, nn.Module]:
    """Projections as the loss should call them: each in its own DDP under DDP.

    They are trained, so their gradients must be averaged across ranks like the student's.
    """
    if not is_distributed(config):
        return dict(projections.items())
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return {
        name: nn.parallel.DistributedDataParallel(module, device_ids=ids)
        for name, module in projections.items()
    }


@contextlib.contextmanager
def training_modes(student: nn.Module, teachers: list[nn.Module]) -> Iterator[None]:
    """Student in train mode, every teacher in eval mode; previous modes restored on exit.

    TextBrewer set modes only under ``with distiller:``; here ``train()`` always does it, so an
    online teacher never runs with dropout.
    """
    before = [(m, m.training) for m in [student, *teachers]]
    student.train()
    for teacher in teachers:
        teacher.eval()
    try:
        yield
    finally:
        for module, was_training in before:
            module.train(was_training)


def call_with_student_restored(callback: Callable[..., Any], student: nn.Module, step: int) -> None:
    """Run ``callback(model=student, step=step)``, then put the student back in train mode."""
    callback(model=student, step=step)
    student.train()
