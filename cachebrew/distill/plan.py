"""How long to train and when to save: pure functions of the step counters.

Epoch mode (``num_epochs``) reproduces TextBrewer's schedule: ``steps_per_epoch =
len(dataloader) // GA``; ``ckpt_frequency`` saves per eligible epoch at step offsets
``int(steps_per_epoch * i / ckpt_frequency)`` (offset 0 = the epoch's end); an epoch is
eligible every ``ckpt_epoch_frequency`` epochs and always the last. Step mode (``num_steps``,
which wins when both are given) saves every ``ckpt_steps`` steps when set and always at the
last step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from cachebrew.config import TrainingConfig
from cachebrew.errors import ConfigError


class Counters(Protocol):
    """The loop counters a plan reads."""

    global_step: int
    epoch: int
    step_in_epoch: int


def require_positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (integral floats accepted), else ConfigError naming ``name``."""
    integral = (
        isinstance(value, int | float) and not isinstance(value, bool) and value == int(value)
    )
    if not integral or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TrainPlan:
    """Length of training and checkpoint schedule.

    Attributes:
        total_steps: optimizer steps to run (``num_steps``, or steps per epoch x epochs).
        accumulation: micro-batches per optimizer step.
        steps_per_epoch: optimizer steps per epoch; 0 in step mode.
        num_epochs: epochs; 0 in step mode.
        ckpt_steps: step-mode save interval, or None (save only at the end).
        ckpt_frequency: epoch-mode saves per eligible epoch.
        ckpt_epoch_frequency: epoch-mode save every this many epochs.
        leftover_batches: epoch mode's ``num_batches % accumulation`` micro-batches at the end
            of each epoch, which no optimizer step uses.
    """

    total_steps: int
    accumulation: int
    steps_per_epoch: int = 0
    num_epochs: int = 0
    ckpt_steps: int | None = None
    ckpt_frequency: int = 1
    ckpt_epoch_frequency: int = 1
    leftover_batches: int = 0

    @classmethod
    def for_epochs(cls, config: TrainingConfig, num_batches: int, num_epochs: Any) -> TrainPlan:
        """Epoch mode over a dataloader of ``num_batches`` batches."""
        epochs = require_positive_int("num_epochs", num_epochs)
        steps_per_epoch = num_batches // config.gradient_accumulation_steps
        if steps_per_epoch < 1:
            raise ConfigError(
                f"the dataloader has {num_batches} batches, fewer than "
                f"gradient_accumulation_steps={config.gradient_accumulation_steps}: no "
                "optimizer step fits in an epoch"
            )
        return cls(
            total_steps=steps_per_epoch * epochs,
            accumulation=config.gradient_accumulation_steps,
            steps_per_epoch=steps_per_epoch,
            num_epochs=epochs,
            ckpt_frequency=config.ckpt_frequency,
            ckpt_epoch_frequency=config.ckpt_epoch_frequency,
            leftover_batches=num_batches % config.gradient_accumulation_steps,
        )

    @classmethod
    def for_steps(cls, config: TrainingConfig, num_steps: Any) -> TrainPlan:
        """Step mode: ``num_steps`` optimizer steps, cycling the data."""
        return cls(
            total_steps=require_positive_int("num_steps", num_steps),
            accumulation=config.gradient_accumulation_steps,
            ckpt_steps=config.ckpt_steps,
        )

    @property
    def by_epochs(self) -> bool:
        """True in epoch mode."""
        return self.steps_per_epoch > 0

    def epoch_checkpoints(self) -> set[int]:
        """Step offsets within an epoch (``global_step % steps_per_epoch``) that save."""
        return {
            int(self.steps_per_epoch * i / self.ckpt_frequency) for i in range(self.ckpt_frequency)
        }

    def should_save(self, counters: Counters) -> bool:
        """Whether to save (and call back) after the step that produced ``counters``."""
        step = counters.global_step
        if not self.by_epochs:
            periodic = self.ckpt_steps is not None and step % self.ckpt_steps == 0
            return periodic or step == self.total_steps
        epoch_number = counters.epoch + 1
        eligible = epoch_number % self.ckpt_epoch_frequency == 0 or epoch_number == self.num_epochs
        return eligible and step % self.steps_per_epoch in self.epoch_checkpoints()

    def resumes_mid_pass(self, counters: Counters) -> bool:
        """Whether resuming at ``counters`` must restore a data position."""
        if not self.by_epochs:
            return True
        return 0 < counters.step_in_epoch < self.steps_per_epoch

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored in checkpoints."""
        return asdict(self)

    def check_resumable(self, saved: dict[str, Any]) -> None:
        """Raise if a checkpoint's plan cannot continue under this one.

        The mode, steps per epoch and accumulation must agree (they define the data
        position); a different total length is allowed (e.g. more epochs).
        """
        keys = ("accumulation", "steps_per_epoch")
        mismatched = [k for k in keys if saved.get(k) != getattr(self, k)]
        if mismatched:
            details = ", ".join(f"{k}: {saved.get(k)} -> {getattr(self, k)}" for k in mismatched)
            raise ConfigError(f"resume: the checkpoint was made with a different plan ({details})")
