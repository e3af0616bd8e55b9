"""The ``distill:`` section for a Hugging Face trainer: one YAML serves both trainers.

:func:`as_distill_config` accepts a :class:`~cachebrew.config.DistillationConfig`, a mapping of
its fields, or a YAML file: either a ``cachebrew distill`` run config (its ``distill:``
section is used, every other key ignored) or a file holding the fields alone. Validation is
the config's own (every problem at once, ``ConfigError``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cachebrew.config import DistillationConfig
from cachebrew.errors import ConfigError
from cachebrew.validation import load_yaml_mapping

DistillSource = DistillationConfig | Mapping[str, Any] | str | os.PathLike[str]


def as_distill_config(source: DistillSource) -> DistillationConfig:
    """A validated :class:`DistillationConfig` from a config, a mapping or a YAML file.

    Raises:
        ConfigError: unreadable file, ``distill: null`` (nothing to distil), or invalid fields
            (all problems at once, prefixed by the file name).
    """
    if isinstance(source, DistillationConfig):
        return source
    if isinstance(source, Mapping):
        return DistillationConfig.from_dict(source)
    data = load_yaml_mapping(source)
    where = f"{os.fspath(source)}: distill"
    if "distill" in data:
        section = data["distill"]
        if section is None:
            raise ConfigError(
                f"{where} is null (hard labels only): train with transformers.Trainer, or give "
                "the distill: fields"
            )
    else:
        section, where = data, os.fspath(source)
    try:
        return DistillationConfig.from_dict(section)
    except ConfigError as error:
        raise ConfigError([f"{where}: {p}" for p in error.problems]) from None
