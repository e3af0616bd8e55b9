"""Turn one example's teacher features into the 2-D arrays a cache stores.

The writer calls :func:`prepare_example` on what :meth:`CacheWriter.add` receives:

- ``logits``: the **raw** teacher logits, (C,) for a sequence-level head or (rows, C) for the
  valid positions of a token-level head (select with ``logits_mask`` first). The writer applies
  the stored reduction (``log_softmax`` or top-k) itself. For ``--logits exact``: the final
  hidden state (rows, H) of those positions instead (:mod:`cachebrew.cache.logits.exact`).
  For ``topk``/``sample`` also the rows already reduced on the teacher's side, a mapping with
  the keys of :data:`~cachebrew.cache.logits.sparse.REDUCED_KEYS` (no (rows, V) copy).
- ``hidden.<l>``: (L, D) with L = the example's ``length``.
- ``hidden_cls.<l>``: (D,), (1, D), or the full (L, D) hidden state (row 0 is kept).
- ``attention.<l>``: (H, L, L) attention as the adaptor returns it.
- ``attention_sum.<l>`` / ``attention_mean.<l>``: (H, L, L) (reduced over heads here) or an
  already reduced (L, L).

Any array-like works (numpy, CPU torch tensors); values are cast to float32. The stored form
of each kind (and the way back, ``restore_shape``) is the table in
:mod:`cachebrew.cache.format.shapes`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cachebrew.cache.format.shapes import stored_rows
from cachebrew.cache.format.spec import FeatureSpec, StoredFeature
from cachebrew.cache.logits.exact import HIDDEN_ARRAY
from cachebrew.cache.logits.sparse import (
    REDUCED_KEYS,
    check_vocab_ids,
    parse_logits_mode,
    sparse_arrays,
    topk_arrays,
)
from cachebrew.errors import CacheError


def prepare_example(
    spec: FeatureSpec, features: Mapping[str, object], length: int
) -> dict[str, np.ndarray]:
    """Validate and reshape one example's features into stored arrays.

    Args:
        spec: what the cache stores.
        features: ``{input name: array}`` with exactly ``spec.input_names`` as keys.
        length: the example's number of tokens L.

    Returns:
        ``{data array name: (rows, width) array}`` (float32; top-k ids int64).

    Raises:
        CacheError: missing or unexpected names, or a shape that does not fit ``length``.
    """
    expected = set(spec.input_names)
    missing, extra = sorted(expected - set(features)), sorted(set(features) - expected)
    if missing or extra:
        raise CacheError(
            f"features do not match the spec: missing {missing}, unexpected {extra}; "
            f"the spec stores {list(spec.input_names)}"
        )
    out: dict[str, np.ndarray] = {}
    for feature in spec:
        for name in feature.input_names:
            given = features[name]
            if isinstance(given, Mapping):  # logits reduced by the teacher's side
                out.update(_prepare_reduced(feature, given))
                continue
            value = np.asarray(features[name], dtype=np.float32)
            try:
                out.update(_prepare_one(feature, name, value, length))
            except ValueError as e:
                raise CacheError(f"feature {name!r} with shape {value.shape}: {e}") from e
    return out


def _prepare_one(
    feature: StoredFeature, name: str, value: np.ndarray, length: int
) -> dict[str, np.ndarray]:
    """Check one input against its kind's accepted shapes, then store it by the shape table."""
    kind = feature.kind
    if kind == "logits":
        return _prepare_logits(feature, value)
    if kind == "hidden":
        _expect(value.ndim == 2 and len(value) == length, f"expected (L={length}, D)")
    elif kind == "hidden_cls":
        _expect(value.ndim in (1, 2) and value.size > 0, "expected (D,), (1, D) or (L, D)")
    elif kind == "attention":
        _expect(value.shape[-2:] == (length, length) and value.ndim == 3, "expected (H, L, L)")
    else:  # attention_sum / attention_mean: reduced over heads here if they are not yet
        _expect(value.shape[-2:] == (length, length) and value.ndim in (2, 3), "expected (H, L, L)")
        if value.ndim == 3:
            value = value.sum(axis=0) if kind == "attention_sum" else value.mean(axis=0)
    return {name: stored_rows(name, value)}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _prepare_logits(feature: StoredFeature, logits: np.ndarray) -> dict[str, np.ndarray]:
    _expect(logits.ndim in (1, 2) and logits.size > 0, "expected raw logits (C,) or (rows, C)")
    logits = logits.reshape(-1, logits.shape[-1])  # (rows, C); exact: (rows, H) hidden
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits hold NaN or inf")
    if feature.logits_mode == "exact":  # the final hidden state (cache/logits/exact.py)
        return {HIDDEN_ARRAY: logits}
    lse = _logsumexp(logits)  # (rows, 1)
    values = logits - lse if feature.reduction == "logprobs" else logits
    mode = parse_logits_mode(feature.logits_mode or "dense")
    if mode.kind != "dense":
        arrays = sparse_arrays(mode, logits, lse, values, feature.topk_layout or 1)
        if feature.topk_layout == 2 and feature.vocab_size:
            check_vocab_ids(arrays["logits.topk_ids"], feature.vocab_size)
        return arrays
    if not feature.topk:
        return {"logits": values}
    k = min(feature.topk, logits.shape[1])
    _expect(k == feature.topk, f"topk={feature.topk} is larger than the {logits.shape[1]} classes")
    ids = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, ids, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)  # (rows, k), largest first
    return {
        "logits.topk_values": np.take_along_axis(values, ids, axis=1),
        "logits.topk_ids": ids.astype(np.int64),
        "logits.logsumexp": lse,
    }


def _prepare_reduced(feature: StoredFeature, rows: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Stored arrays from top-k / sample rows reduced on the teacher's side."""
    mode = parse_logits_mode(feature.logits_mode or "dense")
    keys = REDUCED_KEYS.get(mode.kind)
    if keys is None or set(rows) != set(keys):
        raise CacheError(
            f"logits: reduced rows {sorted(rows)} do not fit logits mode {mode}; "
            f"expected the keys {list(keys or ())}"
        )
    arrays = {key: np.asarray(rows[key]) for key in keys}
    if mode.kind == "sample":
        return {f"logits.{key}": arrays[key].astype(np.int64) for key in keys}
    ids, lse = arrays["topk_ids"].astype(np.int64), arrays["logsumexp"].astype(np.float32)
    raw = arrays["topk_raw"].astype(np.float32)
    if not (np.all(np.isfinite(raw)) and np.all(np.isfinite(lse))):
        raise CacheError("feature 'logits': logits hold NaN or inf")
    kept = raw - lse if feature.reduction == "logprobs" else raw
    out = topk_arrays(mode, ids, raw, lse, kept, feature.topk_layout or 1)
    if feature.topk_layout == 2 and feature.vocab_size:
        check_vocab_ids(out["logits.topk_ids"], feature.vocab_size)
    return out


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    peak = logits.max(axis=1, keepdims=True)
    summed = np.exp((logits - peak).astype(np.float64)).sum(axis=1, keepdims=True)
    return (peak + np.log(summed)).astype(np.float32)
