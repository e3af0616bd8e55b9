"""cachebrew: knowledge distillation that runs the teacher once.

``cachebrew precompute`` writes the teacher's outputs to a compressed cache; ``cachebrew distill``
trains students from it with TextBrewer's losses. Python users start from::

    from cachebrew import DistillationConfig, TrainingConfig, GeneralDistiller
"""

from __future__ import annotations

from typing import Any

from cachebrew._version import __version__
from cachebrew.config import DistillationConfig, IntermediateMatch, TrainingConfig
from cachebrew.errors import (
    CachebrewError,
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    CheckpointError,
    ConfigError,
)

_DISTILLERS = (
    "BasicTrainer",
    "BasicDistiller",
    "GeneralDistiller",
    "MultiTeacherDistiller",
    "MultiTaskDistiller",
)


def __getattr__(name: str) -> Any:
    # The distillers pull in the training loop; load them on first use so that
    # `import cachebrew` stays cheap for the CLI and the cache tools.
    if name in _DISTILLERS:
        from cachebrew import distill

        return getattr(distill, name)
    raise AttributeError(f"module 'cachebrew' has no attribute {name!r}")


__all__ = [
    "CacheCorruptError",
    "CacheError",
    "CacheMismatchError",
    "CachebrewError",
    "CheckpointError",
    "ConfigError",
    "DistillationConfig",
    "IntermediateMatch",
    "TrainingConfig",
    "__version__",
    *_DISTILLERS,
]
