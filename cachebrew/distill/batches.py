"""From a batch to adapted model outputs, with TextBrewer's batch conventions (DESIGN §3).

- A tuple/list batch calls ``model(*batch, **args)``; a Mapping batch (``dict``, HF
  ``BatchEncoding``, ``UserDict``...) calls ``model(**batch, **args)``.
- A Mapping with ``'teacher'`` and ``'student'`` keys gives each side its own batch.
- A ``'teacher_cache'`` value stands in for the teacher's outputs: no teacher forward runs.
  It is honoured next to ``'teacher'``/``'student'`` (TextBrewer) and also in a plain Mapping
  batch, where the other keys form the batch of both sides (TextBrewer passed it to the models
  as a keyword argument instead).
- An adaptor maps ``(batch, model_outputs)`` to a dict with keys from
  :data:`~cachebrew.presets.ADAPTOR_KEYS`; unknown keys are a :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cachebrew.cache.logits.exact import ExactLogits
from cachebrew.cache.logits.sparse import SparseLogits
from cachebrew.errors import ConfigError
from cachebrew.presets import ADAPTOR_KEYS

Adaptor = Callable[[Any, Any], Mapping[str, Any]]

TEACHER = "teacher"
STUDENT = "student"
TEACHER_CACHE = "teacher_cache"

# Adaptor entries that may be a single tensor and are wrapped into a one-element list.
LIST_KEYS = ("logits", "logits_mask", "losses", "labels")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Put every tensor of a (nested) batch on ``device``.

    Mappings become dicts and lists become tuples (as TextBrewer); other values pass through.
    Host tensors bound for CUDA go through pinned memory with a non-blocking copy, so the copy
    overlaps the GPU's work instead of stalling the host (a tensor already pinned, as the cache
    reader's features, is not copied again on the host).
    """
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda" and batch.device.type == "cpu":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, SparseLogits | ExactLogits):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return tuple(move_to_device(item, device) for item in batch)
    return batch


def upcast_floats(value: Any) -> Any:
    """Cast float16/bfloat16 tensors in a nested structure to float32 (losses run in fp32)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, Mapping):
        return {key: upcast_floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [upcast_floats(item) for item in value]
    return value


def forward(model: Callable[..., Any], batch: Any, args: Mapping[str, Any]) -> Any:
    """Call ``model`` on ``batch``: ``model(**batch)`` for a Mapping, else ``model(*batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch, **args)
    return model(*batch, **args)


@dataclass(frozen=True)
class SplitBatch:
    """The parts of one batch.

    Attributes:
        teacher: the teacher side's batch (the adaptor reads it even when cached).
        student: the student side's batch.
        teacher_cache: precomputed teacher outputs, or None if the teacher must run.
    """

    teacher: Any
    student: Any
    teacher_cache: Any = None


def split_batch(batch: Any) -> SplitBatch:
    """Split a batch into teacher batch, student batch and teacher cache (module docstring)."""
    if isinstance(batch, Mapping):
        if TEACHER in batch and STUDENT in batch:
            return SplitBatch(batch[TEACHER], batch[STUDENT], batch.get(TEACHER_CACHE))
        if TEACHER_CACHE in batch:
            shared = {key: value for key, value in batch.items() if key != TEACHER_CACHE}
            return SplitBatch(shared, shared, batch[TEACHER_CACHE])
    return SplitBatch(batch, batch)


def identity_adaptor(batch: Any, model_outputs: Any) -> Any:
    """The default teacher adaptor for cached batches: the cache already holds adapted outputs."""
    return model_outputs


def check_adaptor_keys(results: Mapping[str, Any], who: str) -> None:
    """Raise ConfigError if ``results`` has a key outside ``ADAPTOR_KEYS``.

    TextBrewer ignored unknown keys, so a typo such as ``'input_mask'`` silently disabled
    masking (its own MSRA-NER example did this).
    """
    unknown = [key for key in results if key not in ADAPTOR_KEYS]
    if not unknown:
        return
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), ADAPTOR_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(
            f"{who} returned unknown key {key!r}{hint}; valid keys: {list(ADAPTOR_KEYS)}"
        )
    raise ConfigError(problems)


def adapt(adaptor: Adaptor | None, batch: Any, model_outputs: Any, who: str) -> dict[str, Any]:
    """Run an adaptor, validate its keys and wrap single tensors into lists (``post_adaptor``).

    Args:
        adaptor: ``(batch, model_outputs) -> dict``; None means the identity.
        batch: the batch the outputs came from.
        model_outputs: the model's outputs (or a teacher cache entry).
        who: name used in error messages, e.g. ``'adaptor_S'``.

    Returns:
        A new dict (the adaptor's or cache's own dict is not modified) in which ``logits``,
        ``logits_mask``, ``losses`` and ``labels`` are lists.

    Raises:
        ConfigError: the adaptor did not return a Mapping, or returned an unknown key.
    """
    results = (adaptor or identity_adaptor)(batch, model_outputs)
    if not isinstance(results, Mapping):
        raise ConfigError(
            f"{who} must return a dict with keys from {list(ADAPTOR_KEYS)}, "
            f"got {type(results).__name__}"
        )
    check_adaptor_keys(results, who)
    adapted = dict(results)
    for key in LIST_KEYS:
        if key in adapted and not isinstance(adapted[key], list | tuple):
            adapted[key] = [adapted[key]]
    return adapted


def count_examples(batch: Any) -> int:
    """Size of the first dimension of the first tensor found in ``batch`` (0 if none).

    Used for the ``throughput/examples_per_s`` metric; reads shapes only, never syncs.
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(items, str) or not hasattr(items, "__iter__"):
        return 0
    for item in items:
        found = count_examples(item)
        if found:
            return found
    return 0
