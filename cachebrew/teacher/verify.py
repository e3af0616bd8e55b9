"""``cachebrew verify``: checksums of a whole cache, and optionally its values against the teacher.

With a teacher, N random examples are recomputed from the input ids stored in the cache and
compared, per stored array, with what the cache decodes to: max absolute error, max relative
error (max |cached - fresh| / max |fresh|) and, for logits, the mean KL(fresh || cached).
The values pass when every max relative error is within the tolerance of the array's stored
dtype (:data:`REL_TOLERANCE`, or ``tolerance`` for all). The teacher recomputes in the weight
dtype the cache was written with (the manifest's ``teacher_dtype``; fp32 for older caches), and
bf16 or fp16 weights raise each tolerance to at least theirs. Ids and counts (``topk_ids``,
``sample_ids``, ``sample_counts``) report the share of entries that differ, informational only:
a ``sample`` row's draw is seeded by its logits' bytes, so a recompute whose logits differ in the
last bit (another batch composition) draws anew. With logits stored, the fidelity report of
:mod:`cachebrew.teacher.fidelity` (top-1 agreement, retained mass, KL, KD loss and gradient gaps
at ``temperature``) is added; informational too, the verdict stays about checksums and values.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from cachebrew.cache import open_cache, prepare_example
from cachebrew.cache.logits.rows import kl_rows, log_softmax_rows
from cachebrew.cache.read.reader import CacheReader
from cachebrew.config import resolve_device
from cachebrew.errors import CacheMismatchError
from cachebrew.models import LoadedModel, load_model
from cachebrew.teacher.exact_head import lm_head_of
from cachebrew.teacher.fidelity import FidelityAccumulator, describe_fidelity
from cachebrew.teacher.forward import READY, teacher_features, teacher_request

# stored dtype -> max relative error a correct cache stays within (rounding of the dtype plus
# CPU/GPU kernel differences; fp16 measured 2e-4 on hidden states, int8 is absmax/127 per row)
REL_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "fp16_planes": 2e-3, "bf16": 1.6e-2, "int8": 1.6e-2}


def verify_cache(
    path: str,
    *,
    teacher: str | None = None,
    sample: int = 8,
    seed: int = 0,
    device: str = "auto",
    tolerance: float | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Check every checksum; with ``teacher``, recompute ``sample`` examples and compare.

    Returns:
        ``{"checksums": reader.verify_all() report, "values": {array: {max_abs_error,
        max_rel_error, kl (logits only)}} or None, "tolerance": {array: max_rel_error allowed},
        "fidelity": FidelityAccumulator.report() at ``temperature`` or None, "sampled":
        [example ids], "ok": bool}``.

    Raises:
        CacheError: not a complete cache. CacheMismatchError: ``teacher`` is not the teacher
        the cache was made with (its weights or config hash differ).
    """
    reader = open_cache(path)
    report: dict[str, Any] = {
        "checksums": reader.verify_all(),
        "values": None,
        "fidelity": None,
        "sampled": [],
    }
    if teacher is not None:
        fidelity = FidelityAccumulator(reader, temperature=temperature, seed=seed)  # checks T
        run_device = resolve_device(device)
        # the cache's weight dtype (caches before issue 21: fp32), asked for what it stores
        dtype = reader.manifest.get("extra", {}).get("teacher_dtype", "fp32")
        request = teacher_request(reader.spec, run_device, dtype=dtype)
        loaded = load_model(teacher, role="teacher", request=request)
        _check_same_teacher(reader, loaded, teacher)
        ids = random.Random(seed).sample(reader.example_ids(), min(sample, reader.num_examples))
        report["sampled"] = ids
        report["teacher_dtype"] = dtype
        report["values"] = _compare_values(reader, loaded, ids, run_device, fidelity)
        report["fidelity"] = fidelity.report()
    values = report["values"] or {}
    weights = report.get("teacher_dtype", "fp32")  # bf16/fp16 weights: their rounding too
    report["tolerance"] = {
        name: tolerance
        if tolerance is not None
        else max(REL_TOLERANCE[_stored_dtype(reader, name)], REL_TOLERANCE[weights])
        for name, stats in values.items()
        if "max_rel_error" in stats
    }
    within = all(values[n]["max_rel_error"] <= tol for n, tol in report["tolerance"].items())
    report["ok"] = report["checksums"]["ok"] and within
    return report


def _stored_dtype(reader: CacheReader, array: str) -> str:
    dtype = reader.spec.feature_of(array).array_dtype(array)
    return dtype if dtype in REL_TOLERANCE else "fp32"


def describe_report(report: dict[str, Any]) -> str:
    """What ``cachebrew verify`` prints: checksums, value errors, fidelity, the verdict line."""
    sums = report["checksums"]
    lines = [f"checksums: {sums['chunks']} chunks in {sums['shards']} shards checked"]
    lines += [f"  CORRUPT {problem}" for problem in sums["problems"]]
    for name, stats in (report["values"] or {}).items():
        lines.append(f"  {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in stats.items()))
    if report.get("fidelity"):
        lines.append(describe_fidelity(report["fidelity"]))
    return "\n".join([*lines, verdict_line(report)])


def verdict_line(report: dict[str, Any]) -> str:
    """The last line of ``cachebrew verify``: PASS or FAIL, with the tolerance used."""
    sums = report["checksums"]
    text = f"{'PASS' if report['ok'] else 'FAIL'}: checksums {'ok' if sums['ok'] else 'CORRUPT'}"
    tolerance = report.get("tolerance") or {}
    if report.get("values") is None:
        return f"{text}; values not compared (pass --teacher to recompute a sample)"
    if not tolerance:
        return f"{text}; no array with a value tolerance (ids and counts are informational)"
    worst = {n: report["values"][n]["max_rel_error"] for n in tolerance}
    over = sorted(n for n in tolerance if worst[n] > tolerance[n])
    limits = ", ".join(f"{n} {worst[n]:.2g} <= {tolerance[n]:.2g}" for n in sorted(tolerance))
    weights = f"teacher recomputed in {report.get('teacher_dtype', 'fp32')} weights"
    if over:
        return f"{text}; values over tolerance in {over} (max relative error: {limits}); {weights}"
    return f"{text}; values within tolerance (max relative error: {limits}); {weights}"


def _check_same_teacher(reader: CacheReader, loaded: LoadedModel, source: str) -> None:
    stored = reader.manifest.get("teacher", {})
    for key in ("config_sha256", "weights_sha256"):
        if stored.get(key) != loaded.identity.get(key):
            raise CacheMismatchError(
                f"{source} is not the teacher of {reader.path}: {key} differs "
                f"(cache {str(stored.get(key))[:12]}, given {str(loaded.identity.get(key))[:12]}); "
                f"the cache was made from {stored.get('source')}"
            )


def _compare_values(
    reader: CacheReader,
    loaded: LoadedModel,
    ids: list[str],
    device: torch.device,
    fidelity: FidelityAccumulator,
) -> dict[str, dict[str, float]]:
    loaded.model.to(device)
    errors: dict[str, dict[str, list[float]]] = {}
    for example_id in ids:
        cached = reader.get(example_id)
        item = _model_inputs(cached["input_ids"], loaded.tokenizer)
        fresh_inputs = teacher_features(loaded, reader.spec, [item], device, reduce_logits=False)[0]
        ready = fresh_inputs.pop(READY, None)  # CUDA: wait for the host copies
        if ready is not None:
            ready.synchronize()
        fresh = prepare_example(reader.spec, fresh_inputs, len(item["input_ids"]))
        if "logits" in fresh_inputs:
            fidelity.add(_fresh_logits(loaded, fidelity, fresh_inputs["logits"]), cached)
        for name, fresh_array in fresh.items():
            stats = errors.setdefault(name, {"abs": [], "rel": [], "kl": []})
            _accumulate(stats, name, fresh_array, cached["features"][name], reader)
    return {name: _summarise(stats) for name, stats in errors.items()}


def _fresh_logits(loaded: LoadedModel, fidelity: FidelityAccumulator, stored: Any) -> Any:
    """The teacher's logits rows; an ``exact`` cache stores final hidden states, so apply the
    teacher's own head (precompute checked that it reproduces the logits)."""
    if fidelity.kind != "exact":
        return stored
    hidden = torch.as_tensor(np.asarray(stored, dtype=np.float32))
    head = lm_head_of(loaded.model)
    with torch.no_grad():
        return head.logits(hidden.to(head.weight.device)).cpu().numpy()


def _model_inputs(input_ids: Any, tokenizer: Any) -> dict[str, list[int]]:
    """Teacher inputs rebuilt from stored ids: segment 1 after the first [SEP] (text pairs)."""
    ids = [int(i) for i in input_ids]
    item = {"input_ids": ids, "attention_mask": [1] * len(ids)}
    sep = getattr(tokenizer, "sep_token_id", None)
    if sep is not None and "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        first = ids.index(sep) if sep in ids else len(ids) - 1
        item["token_type_ids"] = [0 if i <= first else 1 for i in range(len(ids))]
    return item


def _accumulate(
    stats: dict[str, list[float]],
    name: str,
    fresh: np.ndarray,
    cached: np.ndarray,
    reader: CacheReader,
) -> None:
    if name.endswith(("_ids", "_counts")):  # share of entries that differ (module docstring)
        same_shape = fresh.shape == cached.shape
        stats["abs"].append(float(np.mean(fresh != cached)) if same_shape else 1.0)
        return
    diff = np.abs(fresh.astype(np.float64) - cached.astype(np.float64))
    peak = float(np.abs(fresh).max()) if fresh.size else 0.0
    stats["abs"].append(float(diff.max()) if diff.size else 0.0)
    stats["rel"].append(float(diff.max()) / peak if peak > 0 else 0.0)
    if name == "logits":
        stats["kl"].append(_mean_kl(fresh, cached, _logits_reduction(reader)))


def _logits_reduction(reader: CacheReader) -> str:
    return next(f.reduction or "raw" for f in reader.spec if f.kind == "logits")


def _mean_kl(fresh: np.ndarray, cached: np.ndarray, reduction: str) -> float:
    if reduction == "logprobs":  # stored values are already log-probabilities
        log_p, log_q = fresh.astype(np.float64), cached.astype(np.float64)
    else:
        log_p, log_q = log_softmax_rows(fresh), log_softmax_rows(cached)
    return float(kl_rows(log_p, log_q).mean())


def _summarise(stats: dict[str, list[float]]) -> dict[str, float]:
    out = {"max_abs_error": max(stats["abs"], default=0.0)}
    if stats["rel"]:
        out["max_rel_error"] = max(stats["rel"])
    if stats["kl"]:
        out["kl"] = float(np.mean(stats["kl"]))
    return out
