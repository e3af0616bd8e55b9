"""Limits of a loaded teacher checked before a run starts (not mid-run as a RuntimeError)."""

from __future__ import annotations

import logging

from cachebrew.errors import ConfigError
from cachebrew.models import LoadedModel, recorded_max_length

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128
# Position-embedding rows these model types reserve before the first token (padding_idx + 1).
_POSITION_OFFSETS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


def resolve_max_length(max_length: int | None, teacher: LoadedModel, source: str) -> int:
    """``max_length``, or the teacher's own (:func:`~cachebrew.models.recorded_max_length`:
    the length ``finetune`` trained it with), or the default; clipped to its position embeddings.

    Raises:
        ConfigError: an explicit ``max_length`` beyond the teacher's positions (it would fail
            mid-run with an index error), naming both numbers and the fix.
    """
    config = getattr(teacher.model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    own = recorded_max_length(teacher.tokenizer)
    default = own or DEFAULT_MAX_LENGTH
    if not isinstance(positions, int):
        return default if max_length is None else max_length
    limit = positions - _POSITION_OFFSETS.get(getattr(config, "model_type", ""), 0)
    if max_length is None:
        if limit < default:
            logger.info("max_length: %d, the teacher's position limit", limit)
        elif own is not None:
            logger.info("max_length: %d, the teacher's own (its tokenizer_config.json)", own)
        return min(default, limit)
    if max_length > limit:
        raise ConfigError(
            f"max_length: {max_length} exceeds the {limit} positions of teacher {source}; "
            f"pass --max-length {limit} or less"
        )
    return max_length
