"""Train from a teacher cache with Hugging Face ``Trainer`` / TRL, launched by accelerate or torchrun.

``DistillationTrainer`` (:mod:`cachebrew.hf.trainer`) is a ``transformers.Trainer`` whose loss is
cachebrew's, computed from the cached teacher features (DESIGN §9). Needs ``accelerate`` (and TRL
for ``SFTConfig`` arguments): ``pip install 'cachebrew[hf]'``.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("accelerate") is None:  # transformers.Trainer needs it
    raise ImportError("cachebrew.hf needs accelerate: pip install 'cachebrew[hf]'")

from cachebrew.hf.config import as_distill_config  # noqa: E402
from cachebrew.hf.data import CacheBatchLoader, cache_train_dataset  # noqa: E402
from cachebrew.hf.trainer import PROJECTIONS_FILE, DistillationTrainer  # noqa: E402

__all__ = [
    "PROJECTIONS_FILE",
    "CacheBatchLoader",
    "DistillationTrainer",
    "as_distill_config",
    "cache_train_dataset",
]
