"""``cachebrew compare``: two caches, example by example (joined on example ids).

Users need it to check a rerun, a cheaper dtype against fp32, or a cache written with another
world size. For every example in both caches and every stored array the two share, the max
absolute difference of the decoded values; ``input_ids`` and ``label`` are compared too. Logits
are also compared as distributions: ``KL(p_A || p_B)`` per row, from log-probabilities rebuilt
from whatever each cache stores (raw logits, ``log_softmax`` log-probs, or top-k values + ids +
log-sum-exp). When the two caches store logits differently (raw vs log-probs, dense vs top-k),
their arrays cannot be compared one to one, so ``logits`` is compared as log-probabilities.

Memory stays bounded: A is streamed shard by shard, and B is read one whole shard at a time
(a shard is the unit the writer buffers, so it fits in memory).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cachebrew.cache.format.spec import StoredFeature
from cachebrew.cache.logits.sparse import parse_logits_mode
from cachebrew.cache.logits.topk_codes import decode_coded
from cachebrew.cache.read.reader import CacheReader, open_cache
from cachebrew.errors import ConfigError

LOGITS = "logits"
_EXAMPLES_SHOWN = 5


@dataclass
class FeatureDiff:
    """Differences of one compared feature (a stored array, ``input_ids``, ``label``, ``logits``)."""

    max_abs_diff: float = 0.0
    examples_differing: int = 0
    shape_mismatches: int = 0
    first_example: str | None = None

    def add(self, example_id: str, diff: float | None, atol: float) -> None:
        """Record one example's max abs diff (None = shapes differ or one side is missing)."""
        if diff is None:
            self.shape_mismatches += 1
        else:
            self.max_abs_diff = max(self.max_abs_diff, diff)
        if diff is None or diff > atol:
            self.examples_differing += 1
            if self.first_example is None:
                self.first_example = example_id


@dataclass
class _KLStats:
    rows: int = 0
    total: float = 0.0
    maximum: float = 0.0

    def add(self, kl: np.ndarray) -> None:
        self.rows += int(kl.size)
        self.total += float(kl.sum())
        self.maximum = max(self.maximum, float(kl.max(initial=0.0)))


@dataclass
class _Comparison:
    atol: float
    features: dict[str, FeatureDiff] = field(default_factory=dict)
    kl: _KLStats = field(default_factory=_KLStats)
    first: tuple[str, str] | None = None

    def add(self, example_id: str, name: str, diff: float | None) -> None:
        entry = self.features.setdefault(name, FeatureDiff())
        entry.add(example_id, diff, self.atol)
        if self.first is None and (diff is None or diff > self.atol):
            self.first = (example_id, name)


def compare_caches(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    *,
    atol: float = 0.0,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare two complete caches example by example.

    Args:
        path_a, path_b: cache roots (local paths or fsspec URLs).
        atol: largest max-abs difference still counted as equal (0: bit-identical values).
        storage_options: fsspec options for both.

    Returns:
        A plain-JSON report: ``ok`` (every shared example within ``atol``, the same example ids
        and the same features), ``identical`` (``ok`` with every difference exactly 0),
        ``first_difference`` (``{"example_id", "feature"}`` or None), ``features`` (per name:
        ``max_abs_diff``, ``examples_differing``, ``shape_mismatches``, ``first_example``),
        ``logits_kl`` (``mean``/``max`` KL(A || B) over logit rows, or None), ``only_in_a`` /
        ``only_in_b`` (count and the first ids), ``features_only_in_a`` / ``_b``.

    Raises:
        ConfigError: ``atol`` is negative or not a number. CacheError: either path is not a
        complete cache; CacheCorruptError: a checksum fails.
    """
    if not atol >= 0:  # also refuses NaN
        raise ConfigError(
            f"compare: --atol must be a number >= 0, got {atol}; 0 means bit-identical"
        )
    a = open_cache(path_a, storage_options=storage_options)
    b = open_cache(path_b, storage_options=storage_options)
    ids_a, ids_b = a.example_ids(), b.example_ids()
    set_a, set_b = set(ids_a), set(ids_b)
    arrays, only_a, only_b, logits_as_logprobs = _compared_arrays(a, b)
    comparison = _Comparison(atol)
    for example_a, example_b in _joined(a, b, set_b):
        _compare_example(comparison, example_a, example_b, arrays, logits_as_logprobs, a, b)
    report = _report(comparison, a, b)
    report["only_in_a"] = _id_summary([i for i in ids_a if i not in set_b])
    report["only_in_b"] = _id_summary([i for i in ids_b if i not in set_a])
    report["common_examples"] = len(set_a & set_b)
    report["features_only_in_a"], report["features_only_in_b"] = only_a, only_b
    consistent = not (
        only_a or only_b or report["only_in_a"]["count"] or report["only_in_b"]["count"]
    )
    report["ok"] = consistent and comparison.first is None
    report["identical"] = report["ok"] and all(
        f["max_abs_diff"] == 0 for f in report["features"].values()
    )
    return report


def _compared_arrays(
    a: CacheReader, b: CacheReader
) -> tuple[list[str], list[str], list[str], bool]:
    """(arrays compared one to one, arrays only in A, only in B, logits compared as log-probs)."""
    logits_a, logits_b = a.spec.get(LOGITS), b.spec.get(LOGITS)
    as_logprobs = (
        logits_a is not None
        and logits_b is not None
        and (logits_a.reduction, bool(logits_a.topk)) != (logits_b.reduction, bool(logits_b.topk))
    )
    names_a, names_b = set(a.spec.data_arrays), set(b.spec.data_arrays)
    if as_logprobs:  # different logit arrays on each side: one "logits" entry covers them
        names_a = {n for n in names_a if not n.startswith(LOGITS)}
        names_b = {n for n in names_b if not n.startswith(LOGITS)}
    return (
        sorted(names_a & names_b),
        sorted(names_a - names_b),
        sorted(names_b - names_a),
        as_logprobs,
    )


def _joined(
    a: CacheReader, b: CacheReader, ids_b: set[str]
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs (example of A, same example of B), in A's order; B read a whole shard at a time."""
    shard_of_b = {i: k for k in range(b.num_shards) for i in b.shard(k).example_ids}
    loaded: tuple[int, dict[str, dict[str, Any]]] = (-1, {})
    for example in a.iter_examples():
        example_id = example["example_id"]
        if example_id not in ids_b:
            continue
        shard = shard_of_b[example_id]
        if loaded[0] != shard:
            loaded = (shard, {e["example_id"]: e for e in b.iter_shard(shard)})
        yield example, loaded[1][example_id]


def _compare_example(
    comparison: _Comparison,
    example_a: dict[str, Any],
    example_b: dict[str, Any],
    arrays: list[str],
    logits_as_logprobs: bool,
    a: CacheReader,
    b: CacheReader,
) -> None:
    example_id = example_a["example_id"]
    comparison.add(
        example_id, "input_ids", max_abs_diff(example_a["input_ids"], example_b["input_ids"])
    )
    comparison.add(example_id, "label", _label_diff(example_a["label"], example_b["label"]))
    for name in arrays:
        diff = max_abs_diff(example_a["features"][name], example_b["features"][name])
        comparison.add(example_id, name, diff)
    logits_a, logits_b = a.spec.get(LOGITS), b.spec.get(LOGITS)
    if logits_a is None or logits_b is None:
        return
    logp_a, logp_b = _paired_logprobs(
        example_a["features"], logits_a, example_b["features"], logits_b
    )
    if logp_a is None or logp_b is None:
        if logits_as_logprobs:
            comparison.add(example_id, LOGITS, None)
        return
    comparison.kl.add(kl_rows(logp_a, logp_b))
    if logits_as_logprobs:
        comparison.add(example_id, LOGITS, max_abs_diff(logp_a, logp_b))


def max_abs_diff(a: Any, b: Any) -> float | None:
    """Max |a - b| over two arrays of one shape (NaN == NaN; NaN vs a number is inf).

    Returns:
        The difference (0.0 for empty arrays), or None when the shapes differ.
    """
    x, y = (
        np.atleast_1d(np.asarray(a, dtype=np.float64)),
        np.atleast_1d(np.asarray(b, dtype=np.float64)),
    )
    if x.shape != y.shape:
        return None
    if x.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):  # inf - inf and NaN are handled just below
        diff = np.abs(x - y)
    nan_a, nan_b = np.isnan(x), np.isnan(y)
    diff[nan_a & nan_b] = 0.0
    diff[nan_a ^ nan_b] = np.inf
    diff[(x == y)] = 0.0  # inf == inf is equal, though inf - inf is NaN
    return float(diff.max())


def _label_diff(a: Any, b: Any) -> float | None:
    if a is None or b is None:
        return 0.0 if a is None and b is None else None
    return max_abs_diff(a, b)


def _paired_logprobs(
    features_a: dict[str, np.ndarray],
    logits_a: StoredFeature,
    features_b: dict[str, np.ndarray],
    logits_b: StoredFeature,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Log-probabilities (rows, V) of both sides over one vocabulary, or None if rows differ."""
    vocab = _vocab_size(features_a, logits_a, features_b, logits_b)
    logp_a, logp_b = logprobs(features_a, logits_a, vocab), logprobs(features_b, logits_b, vocab)
    if logp_a.shape != logp_b.shape:
        return None, None
    return logp_a, logp_b


def _vocab_size(
    features_a: dict[str, np.ndarray],
    logits_a: StoredFeature,
    features_b: dict[str, np.ndarray],
    logits_b: StoredFeature,
) -> int:
    """V: a dense side's width, else the recorded vocab size, else the largest stored id + 1.

    The last is a lower bound (a top-k cache written without ``vocab_size`` does not record V);
    it only changes how the tail mass is spread, which is the same on both sides.
    """
    for features, feature in ((features_a, logits_a), (features_b, logits_b)):
        if not feature.topk:
            return int(features[LOGITS].shape[1])
    for feature in (logits_a, logits_b):
        if feature.vocab_size:
            return int(feature.vocab_size)
    ids = [features[f"{LOGITS}.topk_ids"] for features in (features_a, features_b)]
    return int(max(i.max(initial=0) for i in ids)) + 1


def logprobs(features: dict[str, np.ndarray], feature: StoredFeature, vocab: int) -> np.ndarray:
    """Log-probabilities (rows, V) at T = 1 from a cache's stored logits.

    Dense raw logits: ``log_softmax``; dense log-probs: as stored; top-k: the k stored entries
    exactly, the remaining mass spread evenly over the other V - k ids (as the distill loader
    rebuilds them, :func:`cachebrew.cache.feed.collate.rebuild_topk`).
    """
    if not feature.topk:
        values = features[LOGITS].astype(np.float64)
        return values if feature.reduction == "logprobs" else _log_softmax(values)
    values = features[f"{LOGITS}.topk_values"].astype(np.float64)  # (rows, k)
    ids = features[f"{LOGITS}.topk_ids"].astype(np.int64)
    code = parse_logits_mode(feature.logits_mode or "dense").code
    if code:  # a lossy value code (cache/logits/topk_codes.py): decodes to log-probs
        values = decode_coded(features[f"{LOGITS}.topk_values"], code)
    elif feature.reduction == "raw":
        values = values - features[f"{LOGITS}.logsumexp"].astype(np.float64)
    rest = np.clip(1.0 - np.exp(values).sum(axis=1, keepdims=True), 1e-30, None)
    out = np.repeat(np.log(rest / max(vocab - values.shape[1], 1)), vocab, axis=1)
    np.put_along_axis(out, ids, values, axis=1)
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def kl_rows(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """``KL(p || q)`` per row (rows,), from log-probabilities (rows, V); clipped at 0."""
    if logp.shape[0] == 0:
        return np.zeros(0)
    return np.clip((np.exp(logp) * (logp - logq)).sum(axis=1), 0.0, None)


def _id_summary(ids: list[str]) -> dict[str, Any]:
    return {"count": len(ids), "examples": ids[:_EXAMPLES_SHOWN]}


def _report(comparison: _Comparison, a: CacheReader, b: CacheReader) -> dict[str, Any]:
    kl = comparison.kl
    first = comparison.first
    return {
        "a": a.path,
        "b": b.path,
        "atol": comparison.atol,
        "num_examples_a": a.num_examples,
        "num_examples_b": b.num_examples,
        "features": {name: vars(entry) for name, entry in sorted(comparison.features.items())},
        "logits_kl": {"mean": kl.total / kl.rows, "max": kl.maximum, "rows": kl.rows}
        if kl.rows
        else None,
        "first_difference": None
        if first is None
        else {"example_id": first[0], "feature": first[1]},
    }


def describe_comparison(report: dict[str, Any]) -> str:
    """A few human-readable lines: the verdict, the first difference, per-feature maxima."""
    lines = [
        f"compared {report['common_examples']} shared examples of {report['a']} and {report['b']}"
    ]
    for side in ("a", "b"):
        only = report[f"only_in_{side}"]
        if only["count"]:
            lines.append(
                f"  {only['count']} examples only in {side.upper()}, e.g. {only['examples']}"
            )
        if report[f"features_only_in_{side}"]:
            lines.append(f"  arrays only in {side.upper()}: {report[f'features_only_in_{side}']}")
    for name, entry in report["features"].items():
        shapes = (
            f", {entry['shape_mismatches']} shape mismatches" if entry["shape_mismatches"] else ""
        )
        lines.append(
            f"  {name:<22} max abs diff {entry['max_abs_diff']:.3g}, "
            f"{entry['examples_differing']} examples differ{shapes}"
        )
    if report["logits_kl"]:
        kl = report["logits_kl"]
        lines.append(
            f"  logits KL(A||B)        mean {kl['mean']:.3g}, max {kl['max']:.3g} over {kl['rows']} rows"
        )
    first = report["first_difference"]
    if report["identical"]:
        lines.append("identical")
    elif report["ok"]:
        lines.append(f"equal within atol {report['atol']:g}")
    elif first is not None:
        lines.append(
            f"DIFFERENT: first at example {first['example_id']!r}, feature {first['feature']!r}"
        )
    else:
        lines.append("DIFFERENT: the caches hold different examples or arrays")
    return "\n".join(lines)
