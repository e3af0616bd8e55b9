"""``cachebrew compare``: two caches, example by example (joined on example ids).

Users need it to check a rerun, a cheaper dtype against fp32, or a cache written with another
world size or logits mode. For every example in both caches and every stored array the two
share, the max absolute difference of the decoded values; ``input_ids`` and ``label`` are
compared too. Logits are compared in every ``--logits`` mode
(:mod:`cachebrew.cache.tools.compare_logits`): array by array when both caches store them the
same way, else as distributions (``KL(p_A || p_B)`` per row, from log-probabilities rebuilt from
whatever each side stores), sample caches draw by draw; the report says in plain words which.

Memory stays bounded: A is streamed shard by shard, and B is read one whole shard at a time
(a shard is the unit the writer buffers, so it fits in memory).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cachebrew.cache.read.reader import CacheReader, open_cache
from cachebrew.cache.tools.compare_logits import DISTRIBUTIONS, NOT_COMPARED, LogitsComparison
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
class _Comparison:
    atol: float
    logits: LogitsComparison | None = None
    features: dict[str, FeatureDiff] = field(default_factory=dict)
    first: tuple[str, str] | None = None

    def add(self, example_id: str, name: str, diff: float | None) -> None:
        entry = self.features.setdefault(name, FeatureDiff())
        entry.add(example_id, diff, self.atol)
        self.mark(example_id, name, diff)

    def mark(self, example_id: str, name: str, diff: float | None) -> None:
        """Remember the first difference (``diff`` None: rows or shapes differ)."""
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
        ``logits`` (both modes, ``compared_as``, a plain ``note``, the KL, the examples whose
        top-k ids or draws differ; None without logits on both sides), ``logits_kl``
        (``mean``/``max`` KL(A || B) over logit rows, or None), ``only_in_a`` / ``only_in_b``
        (count and the first ids), ``features_only_in_a`` / ``_b``.

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
    logits = LogitsComparison.of(a, b)
    arrays, only_a, only_b = _compared_arrays(a, b, logits)
    comparison = _Comparison(atol, logits)
    for example_a, example_b in _joined(a, b, set_b):
        _compare_example(comparison, example_a, example_b, arrays)
    report = _report(comparison, a, b)
    report["only_in_a"] = _id_summary([i for i in ids_a if i not in set_b])
    report["only_in_b"] = _id_summary([i for i in ids_b if i not in set_a])
    report["common_examples"] = len(set_a & set_b)
    report["features_only_in_a"], report["features_only_in_b"] = only_a, only_b
    consistent = not (
        only_a or only_b or report["only_in_a"]["count"] or report["only_in_b"]["count"]
    )
    comparable = logits is None or logits.how != NOT_COMPARED
    report["ok"] = consistent and comparable and comparison.first is None
    report["identical"] = report["ok"] and all(
        f["max_abs_diff"] == 0 for f in report["features"].values()
    )
    return report


def _compared_arrays(
    a: CacheReader, b: CacheReader, logits: LogitsComparison | None
) -> tuple[list[str], list[str], list[str]]:
    """(arrays compared one to one, arrays only in A, only in B)."""
    names_a, names_b = set(a.spec.data_arrays), set(b.spec.data_arrays)
    if logits is not None and not logits.arrays_compared_one_to_one:
        names_a = {n for n in names_a if not n.startswith(LOGITS)}  # compared by `logits`
        names_b = {n for n in names_b if not n.startswith(LOGITS)}
    return sorted(names_a & names_b), sorted(names_a - names_b), sorted(names_b - names_a)


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
) -> None:
    example_id = example_a["example_id"]
    comparison.add(
        example_id, "input_ids", max_abs_diff(example_a["input_ids"], example_b["input_ids"])
    )
    comparison.add(example_id, "label", _label_diff(example_a["label"], example_b["label"]))
    for name in arrays:
        diff = max_abs_diff(example_a["features"][name], example_b["features"][name])
        comparison.add(example_id, name, diff)
    if comparison.logits is None:
        return
    diff = comparison.logits.add(example_id, example_a["features"], example_b["features"])
    if comparison.logits.how == DISTRIBUTIONS:
        comparison.add(example_id, LOGITS, diff)
    else:  # arrays (compared above) or draws: no entry of its own, only the verdict
        comparison.mark(example_id, LOGITS, diff)


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


def _id_summary(ids: list[str]) -> dict[str, Any]:
    return {"count": len(ids), "examples": ids[:_EXAMPLES_SHOWN]}


def _report(comparison: _Comparison, a: CacheReader, b: CacheReader) -> dict[str, Any]:
    logits = comparison.logits.report() if comparison.logits is not None else None
    first = comparison.first
    return {
        "a": a.path,
        "b": b.path,
        "atol": comparison.atol,
        "num_examples_a": a.num_examples,
        "num_examples_b": b.num_examples,
        "features": {name: vars(entry) for name, entry in sorted(comparison.features.items())},
        "logits": logits,
        "logits_kl": logits["kl"] if logits is not None else None,
        "first_difference": None
        if first is None
        else {"example_id": first[0], "feature": first[1]},
    }


def describe_comparison(report: dict[str, Any]) -> str:
    """A few plain lines: what was compared, per-feature maxima, the logits, the verdict."""
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
        shapes = entry["shape_mismatches"]
        other = f" ({shapes} of them with another number of rows or width)" if shapes else ""
        lines.append(
            f"  {name:<22} max abs diff {entry['max_abs_diff']:.3g}, "
            f"{entry['examples_differing']} examples differ{other}"
        )
    lines += _logits_lines(report["logits"])
    lines.append(_verdict(report))
    return "\n".join(lines)


def _logits_lines(logits: dict[str, Any] | None) -> list[str]:
    if logits is None:
        return []
    lines = [f"  logits: A {logits['a']}, B {logits['b']}"]
    if logits["note"]:
        lines.append(f"    {logits['note']}")
    total, first = logits["examples"], logits["first_example_that_differs"]
    for key, what in (
        ("examples_with_other_topk_ids", "top-k ids"),
        ("examples_with_other_draws", "draws"),
    ):
        if key in logits:
            differ = logits[key]
            lines.append(
                f"    the same {what} in all {total} examples"
                if not differ
                else f"    other {what} in {differ} of {total} examples (first {first!r})"
            )
    if logits["kl"]:
        kl = logits["kl"]
        lines.append(
            f"    KL(A||B) mean {kl['mean']:.3g}, max {kl['max']:.3g} over {kl['rows']} rows"
        )
    return lines


def _verdict(report: dict[str, Any]) -> str:
    first = report["first_difference"]
    if report["identical"]:
        return "identical"
    if report["ok"]:
        return f"equal within atol {report['atol']:g}"
    if first is not None:
        return f"DIFFERENT: first at example {first['example_id']!r}, feature {first['feature']!r}"
    if report["logits"] is not None and report["logits"]["compared_as"] == NOT_COMPARED:
        return "NOT COMPARABLE: the logits (see above); every other array is equal"
    return "DIFFERENT: the caches hold different examples or arrays"
