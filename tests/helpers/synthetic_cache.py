"""Random teacher features in the shapes :meth:`CacheWriter.add` takes (tests, benchmarks, demos)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cachebrew.cache.format.spec import FeatureSpec

if TYPE_CHECKING:
    from cachebrew.cache.write.writer import CacheWriter


def synthetic_features(
    spec: FeatureSpec,
    length: int,
    rng: np.random.Generator,
    *,
    hidden_size: int = 16,
    num_heads: int = 2,
    num_classes: int = 3,
    logit_rows: int = 1,
) -> dict[str, np.ndarray]:
    """One example's features for ``spec``: every name in ``spec.input_names``.

    Args:
        length: tokens L.
        hidden_size, num_heads, num_classes: D, H and C.
        logit_rows: rows of raw logits (1 = a sequence-level head).

    Returns:
        ``logits`` (logit_rows, C) raw; ``hidden.*``/``hidden_cls.*`` (L, D) float32 with a
        per-dimension offset (like real activations); ``attention*`` (H, L, L) softmax rows.
    """
    features: dict[str, np.ndarray] = {}
    offset = rng.normal(size=(1, hidden_size)).astype(np.float32)
    for name in spec.input_names:
        kind = name.split(".", 1)[0]
        if kind == "logits":
            value = rng.normal(scale=3.0, size=(logit_rows, num_classes))
        elif kind in ("hidden", "hidden_cls"):
            value = rng.normal(size=(length, hidden_size)) + offset
        else:
            scores = rng.normal(scale=2.0, size=(num_heads, length, length))
            value = np.exp(scores - scores.max(axis=-1, keepdims=True))
            value /= value.sum(axis=-1, keepdims=True)
        features[name] = value.astype(np.float32)
    return features


def synthetic_examples(
    spec: FeatureSpec,
    num_examples: int,
    *,
    seed: int = 0,
    min_length: int = 3,
    max_length: int = 12,
    **feature_kwargs: int,
) -> list[dict[str, Any]]:
    """``num_examples`` ragged examples as :meth:`CacheWriter.add` keyword arguments.

    Each dict has ``example_id`` (``'ex00000'`` ...), ``features``, ``input_ids`` (L,),
    ``label`` (int) and ``length`` L uniform in [min_length, max_length].
    """
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(num_examples):
        length = int(rng.integers(min_length, max_length + 1))
        examples.append(
            {
                "example_id": f"ex{i:05d}",
                "features": synthetic_features(spec, length, rng, **feature_kwargs),
                "input_ids": rng.integers(0, 1000, size=length),
                "label": int(rng.integers(0, 3)),
                "length": length,
            }
        )
    return examples


def write_examples(writer: CacheWriter, examples: list[dict[str, Any]]) -> None:
    """Add ``examples`` (from :func:`synthetic_examples`) that this writer's rank owns and that
    are not already written, in order: the loop a precompute runner performs."""
    done = writer.completed_example_ids()
    for position, example in enumerate(examples):
        if example["example_id"] in done or not writer.owns_position(position):
            continue
        writer.add(
            example["example_id"],
            example["features"],
            input_ids=example["input_ids"],
            label=example["label"],
            length=example["length"],
        )
