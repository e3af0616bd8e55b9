"""How ``cachebrew compare`` compares the logits of two caches, in every ``--logits`` mode.

- **The same storage on both sides** (mode, code and reduction): the stored arrays are compared
  one to one like any other array, and the KL of the two distributions is reported.
- **Two storages of full distributions** (dense raw or log-probs, ``topk:K`` with or without a
  value code, ``exact``): the arrays cannot be compared one to one, so ``logits`` is compared
  as log-probabilities rebuilt from whatever each side stores (a top-k tail spread evenly as
  ``distill`` does, exact logits recomputed from the stored hidden state and the cache's LM
  head): the max abs difference of the log-probabilities and ``KL(A || B)`` per row. Two top-k
  sides also say in how many examples their top-k ids differ.
- **Samples** (``sample:N``) are N draws, not a distribution: two sample caches are compared
  draw by draw (per example: the same draws or not); a sample cache against a distribution is
  not compared and the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cachebrew.cache.format.spec import StoredFeature
from cachebrew.cache.logits.exact import LMHead
from cachebrew.cache.logits.rows import kl_rows, log_softmax_rows, topk_logprobs
from cachebrew.cache.logits.sparse import LogitsMode, parse_logits_mode
from cachebrew.cache.logits.topk_codes import decode_coded
from cachebrew.cache.read.reader import CacheReader

LOGITS = "logits"
ARRAYS, DISTRIBUTIONS, DRAWS, NOT_COMPARED = "arrays", "distributions", "draws", "not compared"


def logits_mode(feature: StoredFeature) -> LogitsMode:
    """The mode a logits feature is stored in (``--topk K`` caches are ``topk:K``)."""
    if feature.logits_mode:
        return parse_logits_mode(feature.logits_mode)
    return LogitsMode("topk", feature.topk) if feature.topk else LogitsMode("dense")


def _describe(feature: StoredFeature) -> str:
    mode = logits_mode(feature)
    return f"{mode} {feature.reduction}" if mode.kind in ("dense", "topk") else str(mode)


@dataclass
class LogitsComparison:
    """Compares the logits of the shared examples of two caches (module docstring).

    Attributes:
        how: ``"arrays"``, ``"distributions"``, ``"draws"`` or ``"not compared"``.
        note: what differs between the two storages, in plain words (None if nothing).
    """

    feature_a: StoredFeature
    feature_b: StoredFeature
    head_a: LMHead | None = None
    head_b: LMHead | None = None
    how: str = ARRAYS
    note: str | None = None
    rows: int = 0
    kl_total: float = 0.0
    kl_max: float = 0.0
    examples: int = 0
    other_ids: int = 0
    other_draws: int = 0
    first_other: str | None = None

    @classmethod
    def of(cls, a: CacheReader, b: CacheReader) -> LogitsComparison | None:
        """The comparison of two caches' logits, or None when either stores none."""
        feature_a, feature_b = a.spec.get(LOGITS), b.spec.get(LOGITS)
        if feature_a is None or feature_b is None:
            return None
        mode_a, mode_b = logits_mode(feature_a), logits_mode(feature_b)
        heads = [r.lm_head() if m.kind == "exact" else None for r, m in ((a, mode_a), (b, mode_b))]
        comparison = cls(feature_a, feature_b, heads[0], heads[1])
        comparison.how, comparison.note = _plan(feature_a, feature_b)
        return comparison

    @property
    def arrays_compared_one_to_one(self) -> bool:
        return self.how == ARRAYS

    def add(
        self, example_id: str, features_a: dict[str, Any], features_b: dict[str, Any]
    ) -> float | None:
        """Compare one example. Returns the max abs difference of its log-probabilities
        (``distributions``), 0.0 / inf for the same / other draws (``draws``), None when the
        rows differ in number, or nothing to report (``arrays``, ``not compared``: 0.0)."""
        if self.how == NOT_COMPARED:
            return 0.0
        self.examples += 1
        if self.how == DRAWS:
            same = _same_arrays(
                features_a, features_b, ("logits.sample_ids", "logits.sample_counts")
            )
            if not same:
                self._other(example_id, "draws")
            return 0.0 if same else float("inf")
        logp_a, logp_b = self._logprobs(features_a, features_b)
        if logp_a.shape != logp_b.shape:
            return None
        kl = kl_rows(logp_a, logp_b)
        self.rows += int(kl.size)
        self.kl_total += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max(initial=0.0)))
        if _both_topk(self.feature_a, self.feature_b) and not _same_topk_ids(
            features_a, features_b
        ):
            self._other(example_id, "ids")
        if self.how == ARRAYS:
            return 0.0
        diff = np.abs(logp_a - logp_b)
        return float(diff.max()) if diff.size else 0.0

    def _other(self, example_id: str, what: str) -> None:
        if what == "draws":
            self.other_draws += 1
        else:
            self.other_ids += 1
        self.first_other = self.first_other or example_id

    def _logprobs(
        self, features_a: dict[str, Any], features_b: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        vocab = _vocab_size(
            features_a, self.feature_a, self.head_a, features_b, self.feature_b, self.head_b
        )
        return (
            logprobs(features_a, self.feature_a, vocab, self.head_a),
            logprobs(features_b, self.feature_b, vocab, self.head_b),
        )

    def report(self) -> dict[str, Any]:
        """Plain-JSON: modes, how they were compared, the note, the KL and the id/draw counts."""
        out: dict[str, Any] = {
            "a": _describe(self.feature_a),
            "b": _describe(self.feature_b),
            "compared_as": self.how,
            "note": self.note,
            "examples": self.examples,
            "kl": {"mean": self.kl_total / self.rows, "max": self.kl_max, "rows": self.rows}
            if self.rows
            else None,
        }
        if _both_topk(self.feature_a, self.feature_b):
            out["examples_with_other_topk_ids"] = self.other_ids
        if self.how == DRAWS:
            out["examples_with_other_draws"] = self.other_draws
        out["first_example_that_differs"] = self.first_other
        return out


def _plan(feature_a: StoredFeature, feature_b: StoredFeature) -> tuple[str, str | None]:
    """(how the logits are compared, a plain note on what differs)."""
    mode_a, mode_b = logits_mode(feature_a), logits_mode(feature_b)
    same = str(mode_a) == str(mode_b) and feature_a.reduction == feature_b.reduction
    if mode_a.kind == "sample" or mode_b.kind == "sample":
        if mode_a.kind != mode_b.kind:
            side, sample, other = ("A", mode_a, mode_b)
            if mode_b.kind == "sample":
                side, sample, other = ("B", mode_b, mode_a)
            return NOT_COMPARED, (
                f"{side} stores {sample.size} sampled ids per row ({sample}), the other cache a "
                f"distribution ({other}): samples are not a distribution to take a KL against, "
                "so the logits are not compared; check each cache against its teacher with "
                "`cachebrew verify CACHE --teacher TEACHER`"
            )
        if not same:
            return DRAWS, (
                f"A draws {mode_a.size} ids per row at T={mode_a.temperature:g}, B "
                f"{mode_b.size} at T={mode_b.temperature:g}: their draws differ by construction"
            )
        return DRAWS, None
    if same and _storage(feature_a) == _storage(feature_b):
        return ARRAYS, None
    kinds = {mode_a.kind, mode_b.kind}
    rebuilt = [
        text
        for kind, text in (
            ("topk", "a top-k tail spread evenly over the other ids"),
            ("exact", "exact logits recomputed with the cache's LM head"),
        )
        if kind in kinds
    ]
    how = f" ({'; '.join(rebuilt)})" if rebuilt else ""
    return DISTRIBUTIONS, (
        f"A stores the logits as {_describe(feature_a)}, B as {_describe(feature_b)}: compared "
        f"as log-probabilities{how}"
    )


def _storage(feature: StoredFeature) -> tuple[Any, ...]:
    """What decides whether two caches' logits arrays line up one to one: the top-k layout and
    the stored id type (a ``--topk K`` cache keeps ids by value, ``topk:K`` by id, as deltas)."""
    ids = feature.array_dtype("logits.topk_ids") if logits_mode(feature).kind == "topk" else None
    return (feature.topk_layout, ids)


def logprobs(
    features: dict[str, np.ndarray],
    feature: StoredFeature,
    vocab: int,
    head: LMHead | None = None,
) -> np.ndarray:
    """Float64 log-probabilities (rows, V) at T = 1 from one example's stored logits.

    Dense raw logits: ``log_softmax``; dense log-probs: as stored; top-k (any value code): the
    k stored entries exactly, the rest of the mass spread evenly over the other V - k ids
    (:func:`cachebrew.cache.logits.rows.topk_logprobs`, as ``distill`` rebuilds them); exact:
    the logits recomputed from ``logits.hidden`` with the cache's LM ``head``.
    """
    mode = logits_mode(feature)
    if mode.kind == "exact":
        assert head is not None
        hidden = torch.as_tensor(np.asarray(features["logits.hidden"], dtype=np.float32))
        with torch.no_grad():
            return log_softmax_rows(head.logits(hidden).double().numpy())
    if mode.kind == "dense":
        values = np.asarray(features[LOGITS], dtype=np.float64)
        return values if feature.reduction == "logprobs" else log_softmax_rows(values)
    values = np.asarray(features["logits.topk_values"], dtype=np.float64)  # (rows, k)
    if mode.code:  # a lossy value code (cache/logits/topk_codes.py): decodes to log-probs
        values = decode_coded(features["logits.topk_values"], mode.code).astype(np.float64)
    elif feature.reduction == "raw":
        values = values - np.asarray(features["logits.logsumexp"], dtype=np.float64)
    ids = torch.as_tensor(np.asarray(features["logits.topk_ids"], dtype=np.int64))
    return topk_logprobs(torch.from_numpy(values), ids, vocab, torch.float64).numpy()


def _vocab_size(
    features_a: dict[str, np.ndarray],
    feature_a: StoredFeature,
    head_a: LMHead | None,
    features_b: dict[str, np.ndarray],
    feature_b: StoredFeature,
    head_b: LMHead | None,
) -> int:
    """V: an exact side's head, a dense side's width, a recorded vocab size, else the largest
    stored id + 1 (a lower bound for a top-k cache written without ``vocab_size``: it only
    changes how the tail mass is spread, the same on both sides)."""
    for head in (head_a, head_b):
        if head is not None:
            return head.num_classes
    sides = ((features_a, feature_a), (features_b, feature_b))
    for features, feature in sides:
        if logits_mode(feature).kind == "dense":
            return int(features[LOGITS].shape[1])
    for _, feature in sides:
        if feature.vocab_size:
            return int(feature.vocab_size)
    ids = [np.asarray(features["logits.topk_ids"]) for features, _ in sides]
    return int(max(i.max(initial=0) for i in ids)) + 1


def _both_topk(feature_a: StoredFeature, feature_b: StoredFeature) -> bool:
    return logits_mode(feature_a).kind == logits_mode(feature_b).kind == "topk"


def _same_topk_ids(features_a: dict[str, Any], features_b: dict[str, Any]) -> bool:
    """Whether each row keeps the same set of top-k ids (layouts order them differently)."""
    ids_a = np.sort(np.asarray(features_a["logits.topk_ids"]), axis=1)
    ids_b = np.sort(np.asarray(features_b["logits.topk_ids"]), axis=1)
    return ids_a.shape == ids_b.shape and bool(np.array_equal(ids_a, ids_b))


def _same_arrays(
    features_a: dict[str, Any], features_b: dict[str, Any], names: tuple[str, ...]
) -> bool:
    return all(
        np.shape(features_a[n]) == np.shape(features_b[n])
        and bool(np.array_equal(features_a[n], features_b[n]))
        for n in names
    )
