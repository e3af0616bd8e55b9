"""Models: teachers and students from a local HF directory, an HF config file, or a factory.

Specs: a local HF directory (``config.json`` + ``*.safetensors``, ``tokenizer.json`` if present);
an HF config JSON file (fresh, seeded weights); ``"module:function"`` (no arguments, returns a
model or ``(model, adaptor)``). HF models are built with ``attn_implementation="eager"`` and
hidden states and attentions returned, as the matches need them; teachers are put in eval mode
with gradients off. Every load is local: no hub download ever happens.

The package's modules: :mod:`~cachebrew.models.loading` (specs -> :class:`LoadedModel`),
:mod:`~cachebrew.models.identity` (what the manifest records), :mod:`~cachebrew.models.adaptors`
(HF outputs -> adaptor keys), :mod:`~cachebrew.models.tokenizer` and
:mod:`~cachebrew.models.student` (init from a teacher, AdamW groups). Every public name is
importable from ``cachebrew.models``.
"""

from __future__ import annotations

from cachebrew.config import resolve_device
from cachebrew.models.adaptors import TOKEN_LEVEL_KINDS, Adaptor, default_adaptor
from cachebrew.models.identity import hash_config, hash_state_dict, model_identity
from cachebrew.models.loading import (
    ARCHITECTURE_SUFFIXES,
    ROLES,
    TASK_MODEL_CLASSES,
    LoadedModel,
    kind_from_architectures,
    load_model,
)
from cachebrew.models.student import adamw_param_groups, count_parameters, init_from_teacher
from cachebrew.models.tokenizer import load_tokenizer, record_max_length, recorded_max_length

__all__ = [
    "ARCHITECTURE_SUFFIXES",
    "ROLES",
    "TASK_MODEL_CLASSES",
    "TOKEN_LEVEL_KINDS",
    "Adaptor",
    "LoadedModel",
    "adamw_param_groups",
    "count_parameters",
    "default_adaptor",
    "hash_config",
    "hash_state_dict",
    "init_from_teacher",
    "kind_from_architectures",
    "load_model",
    "load_tokenizer",
    "record_max_length",
    "recorded_max_length",
    "model_identity",
    "resolve_device",
]
