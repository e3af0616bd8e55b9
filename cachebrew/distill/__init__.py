"""The distillation loop and TextBrewer-compatible distillers that can run the student alone.

Public classes, used exactly as TextBrewer's::

    from cachebrew.distill import GeneralDistiller

- :class:`BasicTrainer`: supervised training of one model.
- :class:`BasicDistiller`: one teacher, KD on logits and hard labels.
- :class:`GeneralDistiller`: one teacher plus intermediate feature matches.
- :class:`MultiTeacherDistiller`: several teachers of one task (weighted mean logits).
- :class:`MultiTaskDistiller`: one teacher per task, one student, sampled tasks.

Any of them trains from ``teacher_cache`` batches with ``model_T=None``. Module map:
``batches`` (batch splitting, adaptors), ``compute`` (the loss), ``objectives`` (forwards +
loss per micro-batch), ``loop`` (the runner), ``plan`` (length and checkpoint schedule),
``data``/``multitask`` (resumable batch sources), ``checkpoint``, ``logger`` (metrics),
``runtime`` (seeds, RNG, precision, DDP), ``base``/``distillers`` (the façades).
"""

from cachebrew.distill.checkpoint import CheckpointError
from cachebrew.distill.distillers import (
    BasicDistiller,
    BasicTrainer,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
)

__all__ = [
    "BasicDistiller",
    "BasicTrainer",
    "CheckpointError",
    "GeneralDistiller",
    "MultiTaskDistiller",
    "MultiTeacherDistiller",
]
