"""Limits of a loaded teacher checked before a run starts (not mid-run as a RuntimeError)."""

from __future__ import annotations

import logging

from cachebrew.errors import ConfigError
from cachebrew.models import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128
# Position-embedding rows these model types reserve before the first token (padding_idx + 1).
_POSITION_OFFSETS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


def resolve_max_length(max_length: int | None, teacher: LoadedModel, source: str) -> int:
    """``max_length``, or the default clipped to the teacher's position embeddings.

    Raises:
        ConfigError: an explicit ``max_length`` beyond the teacher's positions (it would fail
            mid-run with an index error), naming both numbers and the fix.
    """
    config = getattr(teacher.model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return DEFAULT_MAX_LENGTH if max_length is None else max_length
    limit = positions - _POSITION_OFFSETS.get(getattr(config, "model_type", ""), 0)
    if max_length is None:
        if limit < DEFAULT_MAX_LENGTH:
            logger.info("max_length: %d, the teacher's position limit", limit)
        return min(DEFAULT_MAX_LENGTH, limit)
    if max_length > limit:
        raise ConfigError(
            f"max_length: {max_length} exceeds the {limit} positions of teacher {source}; "
            f"pass --max-length {limit} or less"
        )
    return max_length
