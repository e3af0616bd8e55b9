"""cachebrew: knowledge distillation that runs the teacher once.

``cachebrew precompute`` writes the teacher's outputs to a compressed cache; ``cachebrew distill``
trains students from it with TextBrewer's losses. Python users start from::

    from cachebrew import DistillationConfig, TrainingConfig, GeneralDistiller

TextBrewer's top-level names are here too (``FEATURES``, ``ADAPTOR_KEYS``, the loss and
scheduler maps, ``register_new``, ``Distillers``), and ``CacheDataset`` reads a cache from
Python.
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
from cachebrew.presets import (
    ADAPTOR_KEYS,
    FEATURES,
    KD_LOSS_MAP,
    MATCH_LOSS_MAP,
    PROJ_MAP,
    TEMPERATURE_SCHEDULER,
    WEIGHT_SCHEDULER,
    register_new,
)

_DISTILLERS = (
    "BasicTrainer",
    "BasicDistiller",
    "GeneralDistiller",
    "MultiTeacherDistiller",
    "MultiTaskDistiller",
)


# TextBrewer's name -> class map (``textbrewer.Distillers``).
_DISTILLER_KEYS = {
    "Basic": "BasicDistiller",
    "General": "GeneralDistiller",
    "MultiTeacher": "MultiTeacherDistiller",
    "MultiTask": "MultiTaskDistiller",
    "Train": "BasicTrainer",
}


def __getattr__(name: str) -> Any:
    # The distillers pull in the training loop and CacheDataset zarr/pyarrow; load them on
    # first use so that `import cachebrew` stays cheap for the CLI and the cache tools.
    if name in _DISTILLERS:
        from cachebrew import distill

        return getattr(distill, name)
    if name == "Distillers":
        from cachebrew import distill

        return {key: getattr(distill, cls) for key, cls in _DISTILLER_KEYS.items()}
    if name == "CacheDataset":
        from cachebrew.cache.feed.dataset import CacheDataset

        return CacheDataset
    if name == "utils":
        # `import cachebrew as textbrewer; textbrewer.utils.display_parameters(...)`
        import importlib

        return importlib.import_module("cachebrew.utils")
    raise AttributeError(f"module 'cachebrew' has no attribute {name!r}")


__all__ = [
    "ADAPTOR_KEYS",
    "CacheDataset",
    "Distillers",
    "FEATURES",
    "KD_LOSS_MAP",
    "MATCH_LOSS_MAP",
    "PROJ_MAP",
    "TEMPERATURE_SCHEDULER",
    "WEIGHT_SCHEDULER",
    "register_new",
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
