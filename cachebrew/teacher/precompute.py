"""``cachebrew precompute``: corpus -> teacher -> cache writer, once, resumably.

The corpus is cut into shard windows of ``shard_size`` consecutive examples; shard k holds
corpus positions ``[k * shard_size, (k + 1) * shard_size)``. Inside a window the examples are
length-bucketed into batches (less padding), run through the teacher in inference mode, and
handed back in corpus order to a background thread that encodes, compresses and writes them,
so compression never stalls the device. The cache content therefore does not depend on the
batch size, the device or the number of ranks, and an interrupted run resumes by skipping the
windows whose shards are already published.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from cachebrew.cache import CacheWriter, FeatureSpec
from cachebrew.config import DistillationConfig
from cachebrew.corpus import Record, length_bucketed_batches, read_corpus, tokenize_records
from cachebrew.errors import ConfigError
from cachebrew.models import LoadedModel, load_model
from cachebrew.teacher.background_writer import BackgroundWriter
from cachebrew.teacher.exact_head import write_teacher_head
from cachebrew.teacher.forward import (
    READY,
    input_device,
    spec_dtype_is_half,
    teacher_features,
    teacher_request,
)
from cachebrew.teacher.limits import DEFAULT_MAX_LENGTH, resolve_max_length
from cachebrew.teacher.parallel import Partition, begin, publish
from cachebrew.teacher.precompute_config import (
    DEFAULT_FEATURES,
    PrecomputeConfig,
    check_layers_exist,
    load_precompute_config,
    resolve_feature_spec,
    with_feature_dtypes,
)
from cachebrew.validation import resolve_path
from cachebrew.world import rank_device

__all__ = [  # the config and the forward live in their own modules; importable from here too
    "DEFAULT_FEATURES",
    "READY",
    "PrecomputeConfig",
    "PrecomputeSummary",
    "check_layers_exist",
    "describe_summary",
    "load_precompute_config",
    "resolve_feature_spec",
    "run_precompute",
    "spec_dtype_is_half",
    "teacher_features",
    "with_feature_dtypes",
]

logger = logging.getLogger(__name__)


@dataclass
class PrecomputeSummary:
    """What a precompute run did (printed by the CLI, returned to Python callers)."""

    out: str
    num_examples: int
    examples_computed: int
    shards_skipped: int
    seconds: float
    bytes_on_disk: int
    uncompressed_bytes: int
    pass_seconds: float = 0.0  # the teacher pass and writing only (no model load, corpus read)

    @property
    def examples_per_s(self) -> float:
        return self.examples_computed / self.seconds if self.seconds > 0 else 0.0


def run_precompute(
    cfg: PrecomputeConfig,
    *,
    progress: bool = True,
    partition: Partition | None = None,
    runs: Mapping[str, DistillationConfig] | None = None,
) -> PrecomputeSummary:
    """Run the teacher over the corpus once and write the cache at ``cfg.out``.

    ``partition`` (:mod:`cachebrew.teacher.parallel`): compute only this rank's shard windows.
    ``runs``: what the runs of ``cfg.from_runs`` read (:func:`resolve_feature_spec`).

    Raises:
        ConfigError: bad teacher, corpus fields, features or layers not produced by the teacher.
        CacheError: the output holds a different cache (names what differs) or a complete one
            without ``overwrite``; a write failed (no manifest is written).
    """
    start = time.perf_counter()
    part = partition or Partition()
    cfg = replace(cfg, teacher=resolve_path(cfg.teacher, "."))  # the manifest's source: any cwd
    device = rank_device(cfg.device, part.world)
    with _offload_folder(cfg) as offload:
        teacher, spec, dtype = load_teacher(cfg, device, offload, runs)
        cfg = replace(cfg, max_length=resolve_max_length(cfg.max_length, teacher, cfg.teacher))
        return _precompute(cfg, teacher, spec, dtype, part, progress, start)


def load_teacher(
    cfg: PrecomputeConfig,
    device: torch.device,
    offload_folder: str | None = None,
    runs: Mapping[str, DistillationConfig] | None = None,
) -> tuple[LoadedModel, FeatureSpec, str]:
    """The teacher, asked only for what ``cfg`` stores, on ``device`` (or spread over devices by
    ``cfg.device_map``); the feature spec; the weight dtype it runs in (``fp32``/``bf16``/``fp16``).

    Raises:
        ConfigError: a bad teacher, no tokenizer, layers the teacher does not have, a request
            the teacher cannot honour (:func:`~cachebrew.models.request.resolve_attn_implementation`).
    """
    # Only the kinds and dtypes of this spec are read (what the teacher returns, its dtype);
    # the vocabulary size, which sizes the ids, is known once the teacher is loaded: until then
    # a stand-in that every mode's limits admit (q-codes' varint ids stop at 2**21).
    wanted = resolve_feature_spec(cfg, 1 << 20, runs)
    request = teacher_request(
        wanted, device, attn_implementation=cfg.attn_implementation, dtype=cfg.teacher_dtype,
        device_map=cfg.device_map, max_memory=cfg.max_memory, offload_folder=offload_folder,
    )  # fmt: skip
    teacher = load_model(
        cfg.teacher, task=cfg.task, num_labels=cfg.num_labels, role="teacher", request=request
    )
    if teacher.tokenizer is None:
        raise ConfigError(f"teacher {cfg.teacher}: no tokenizer.json next to the weights")
    spec = resolve_feature_spec(cfg, getattr(teacher.model.config, "vocab_size", None), runs)
    check_layers_exist(spec, getattr(teacher.model.config, "num_hidden_layers", None))
    if cfg.device_map is None:
        teacher.model.to(device)
    kernel = getattr(getattr(teacher.model, "config", None), "_attn_implementation", None)
    logger.info("teacher: %s weights, %s attention", request.dtype, kernel or "its own")
    return teacher, spec, request.dtype


@contextmanager
def _offload_folder(cfg: PrecomputeConfig) -> Iterator[str | None]:
    """``cfg.offload_folder``, or with ``device_map`` a temporary folder removed afterwards."""
    if cfg.device_map is None or cfg.offload_folder is not None:
        yield cfg.offload_folder
        return
    folder = tempfile.mkdtemp(prefix="cachebrew-offload-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _precompute(
    cfg: PrecomputeConfig,
    teacher: LoadedModel,
    spec: FeatureSpec,
    dtype: str,
    part: Partition,
    progress: bool,
    start: float,
) -> PrecomputeSummary:
    corpus = read_corpus(cfg.data, **cfg.corpus_fields())
    device = input_device(teacher.model)
    records = list(corpus)
    writer = CacheWriter(
        cfg.out,
        spec,
        teacher_info=teacher.identity,
        corpus_fingerprint=corpus.fingerprint,
        tokenizer_hash=teacher.identity.get("tokenizer_sha256"),
        shard_size=cfg.shard_size,
        overwrite=begin(part, cfg.out, cfg.overwrite),
        wait_seconds=float("inf") if cfg.wait else 0.0,
        extra={
            "max_length": cfg.max_length,
            "label_names": corpus.label_names,
            "teacher_dtype": dtype,
        },
        rank=part.world.rank,
        world_size=part.world.world_size,
    )
    pass_start = time.perf_counter()
    with writer, BackgroundWriter(writer) as sink:
        write_teacher_head(teacher.model, spec, cfg.out, part.world.is_main)  # --logits exact
        skipped = set(writer.completed_shards())
        todo = [k for k in range(_num_windows(len(records), cfg.shard_size)) if part.world.owns(k)]
        todo = [k for k in todo if k not in skipped]
        show = progress and part.world.is_main
        bar = tqdm(total=len(records), disable=not show, unit="ex", desc="precompute")
        bar.update(len(records) - sum(len(_window(records, k, cfg.shard_size)) for k in todo))
        for k in todo:
            window = _window(records, k, cfg.shard_size)
            for example in _run_window(teacher, spec, window, cfg, device):
                sink.put(example)
            bar.update(len(window))
            bar.set_postfix_str(sink.progress_text())
        bar.close()
    pass_seconds = time.perf_counter() - pass_start
    manifest = writer.manifest or publish(part, cfg.out) or {}
    totals = manifest.get("totals", {})
    computed = sum(len(_window(records, k, cfg.shard_size)) for k in todo)
    return PrecomputeSummary(
        out=cfg.out,
        num_examples=totals.get("num_examples", len(records)),
        examples_computed=computed,
        shards_skipped=len(skipped),
        seconds=time.perf_counter() - start,
        bytes_on_disk=totals.get("bytes_on_disk", 0),
        uncompressed_bytes=totals.get("uncompressed_bytes", 0),
        pass_seconds=pass_seconds,
    )


def _num_windows(num_records: int, shard_size: int) -> int:
    return (num_records + shard_size - 1) // shard_size


def _window(records: list[Record], k: int, shard_size: int) -> list[Record]:
    return records[k * shard_size : (k + 1) * shard_size]


def _run_window(
    teacher: LoadedModel,
    spec: FeatureSpec,
    window: list[Record],
    cfg: PrecomputeConfig,
    device: torch.device,
) -> Iterator[dict[str, Any]]:
    """Teacher features for one shard window, yielded in corpus order."""
    words = isinstance(window[0].text, list)
    max_length = cfg.max_length or DEFAULT_MAX_LENGTH  # resolved by run_precompute
    items = tokenize_records(window, teacher.tokenizer, max_length, is_split_into_words=words)
    results: dict[int, dict[str, Any]] = {}
    causal = teacher.kind == "causal_lm" and cfg.label_field is None
    lengths = [len(item["input_ids"]) for item in items]
    for batch_indices in length_bucketed_batches(lengths, cfg.batch_size):
        batch_items = [items[i] for i in batch_indices]
        features = teacher_features(teacher, spec, batch_items, device)
        for i, example_features in zip(batch_indices, features, strict=True):
            results[i] = {
                "example_id": window[i].example_id,
                "features": example_features,
                "input_ids": items[i]["input_ids"],
                # a causal LM learns its own tokens (the model shifts them by one)
                "label": items[i]["input_ids"] if causal else items[i].get("labels"),
            }
    for i in range(len(window)):
        yield results.pop(i)


def describe_summary(summary: PrecomputeSummary) -> str:
    """One human-readable paragraph for the end of a run."""
    ratio = summary.uncompressed_bytes / summary.bytes_on_disk if summary.bytes_on_disk else 0.0
    return (
        f"cache {summary.out}: {summary.num_examples} examples "
        f"({summary.examples_computed} computed now, {summary.shards_skipped} shards kept), "
        f"{summary.bytes_on_disk / 1e6:.1f} MB on disk ({ratio:.2f}x compression), "
        f"{summary.seconds:.1f} s ({summary.pass_seconds:.1f} s teacher pass and writing), "
        f"{summary.examples_per_s:.1f} examples/s"
    )
