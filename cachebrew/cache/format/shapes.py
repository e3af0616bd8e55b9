"""How each kind of per-layer array is shaped: one example, its stored rows, a padded batch.

The one table of per-kind shape rules (:data:`ARRAY_SHAPES`), read by the write side
(:mod:`cachebrew.cache.write.prepare`), the CPU batch copy (:mod:`cachebrew.cache.feed.batch_copy`)
and the CUDA feed (:mod:`cachebrew.cache.feed.gpu_feed`). L is the example's token count, W the
batch's longest example, D the hidden width, H the attention heads, B the batch.

=================  ==============  =======================  =================
kind               one example     stored (rows, width)     padded batch
=================  ==============  =======================  =================
``hidden``         (L, D)          (L, D)                   (B, W, D)
``hidden_cls``     (D,)            (1, D)                   (B, D), no padding
``attention``      (H, L, L)       (H * L * L, 1)           (B, H, W, W)
``attention_sum``  (L, L)          (L * L, 1)               (B, W, W)
``attention_mean`` (L, L)          (L * L, 1)               (B, W, W)
=================  ==============  =======================  =================

Logits rows keep their stored (rows, width) shape and are not padded by these rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArrayShape:
    """The shape rule of one kind of per-layer array.

    Attributes:
        token_axes: axes of length L (0: one row per example, 1: a row per token, 2: a map).
        heads: a leading axis of H heads (per-head attention).
        width: a trailing axis of D values (hidden states).
    """

    token_axes: int
    heads: bool = False
    width: bool = False

    @property
    def flattened(self) -> bool:
        """Stored as one column of every value (the attention maps)."""
        return not self.width


ARRAY_SHAPES: dict[str, ArrayShape] = {
    "hidden": ArrayShape(token_axes=1, width=True),
    "hidden_cls": ArrayShape(token_axes=0, width=True),
    "attention": ArrayShape(token_axes=2, heads=True),
    "attention_sum": ArrayShape(token_axes=2),
    "attention_mean": ArrayShape(token_axes=2),
}


def array_kind(name: str) -> str:
    """The kind of a stored array name: ``hidden.4`` -> ``hidden``, ``logits`` -> ``logits``."""
    return name.split(".", 1)[0]


def array_shape(name: str) -> ArrayShape | None:
    """The shape rule of array ``name``, or None (logits and their companions)."""
    return ARRAY_SHAPES.get(array_kind(name))


def stored_rows(name: str, value: np.ndarray) -> np.ndarray:
    """One example's array in its stored (rows, width) form (the table's third column).

    ``value`` is already in the example shape (``hidden_cls`` may be (L, D): row 0 is kept).
    """
    rule = array_shape(name)
    if rule is None:
        return value
    if rule.flattened:
        return value.reshape(-1, 1)
    rows = value.reshape(-1, value.shape[-1])
    return rows[:1] if rule.token_axes == 0 else rows


def restore_shape(name: str, array: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`stored_rows` for an example of ``length`` tokens.

    ``attention.<l>`` -> (H, L, L); ``attention_sum/mean.<l>`` -> (L, L); ``hidden_cls.<l>``
    -> (D,); ``logits`` of a sequence head stay (1, C); everything else unchanged.
    """
    rule = array_shape(name)
    if rule is None or rule.token_axes == 1:
        return array
    if rule.token_axes == 0:
        return array.reshape(-1)
    return array.reshape(-1, length, length) if rule.heads else array.reshape(length, length)


def padded_shape(
    name: str, rows: Sequence[np.ndarray], lengths: Sequence[int], width: int
) -> tuple[int, ...]:
    """The (B, ...) float32 batch of array ``name`` (the table's last column), W = ``width``.

    Args:
        rows: per example its stored rows; the first gives D or H.
        lengths: per example its token count (the first gives H from its stored size).
    """
    rule = array_shape(name)
    if rule is None:
        raise ValueError(f"array {name!r} has no padded batch shape")
    shape: tuple[int, ...] = (len(rows),)
    if rule.heads:
        shape += (rows[0].size // (lengths[0] * lengths[0]),)
    shape += (width,) * rule.token_axes
    return shape + ((rows[0].shape[1],) if rule.width else ())


def example_region(name: str, shape: tuple[int, ...], length: int) -> tuple[slice, ...]:
    """Index of one example's real values inside its (unbatched) padded slot of ``shape``.

    The remaining positions of the slot are padding: every token axis beyond ``length``.
    """
    rule = array_shape(name)
    if rule is None or rule.token_axes == 0:
        return tuple(slice(None) for _ in shape)
    lead = (slice(None),) if rule.heads else ()
    tail = (slice(None),) if rule.width else ()
    return lead + (slice(0, length),) * rule.token_axes + tail
