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
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from cachebrew.cache import CacheWriter, FeatureSpec
from cachebrew.cache.format.codecs import DEFAULT_CODEC
from cachebrew.cache.format.reads import features_to_store
from cachebrew.cache.format.spec import DTYPES
from cachebrew.cache.logits.sparse import parse_logits_mode
from cachebrew.config import DistillationConfig
from cachebrew.corpus import (
    CorpusFields,
    Record,
    length_bucketed_batches,
    pad_batch,
    read_corpus,
    tokenize_records,
)
from cachebrew.errors import ConfigError
from cachebrew.models import LoadedModel, load_model
from cachebrew.teacher.background_writer import BackgroundWriter
from cachebrew.teacher.exact_head import is_exact, with_final_hidden, write_teacher_head
from cachebrew.teacher.limits import DEFAULT_MAX_LENGTH, resolve_max_length
from cachebrew.teacher.parallel import Partition, begin, publish
from cachebrew.validation import (
    ConfigBase,
    check_bool,
    check_choice,
    check_int,
    load_config,
    raise_if_any,
    resolve_path,
    set_field,
)
from cachebrew.world import rank_device

logger = logging.getLogger(__name__)

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: On CUDA each example's features carry a ``torch.cuda.Event`` under this key: the features are
#: pinned host tensors still being copied, which the writer thread waits for before reading.
READY = "_ready"


@dataclass(frozen=True)
class PrecomputeConfig(CorpusFields, ConfigBase):
    """Everything ``cachebrew precompute`` needs; YAML keys and CLI flags share these names.

    What to store comes from ``features`` (CLI form, e.g. ``logits,hidden:0,4,attention:4``),
    or is derived from the ``DistillationConfig`` YAML at ``distill_config`` (its kd loss and
    matches); without either, only ``logits`` are stored. ``dtype`` applies to every feature;
    ``feature_dtypes`` overrides it per kind, e.g. ``{"hidden": "int8", "attention": "fp16"}``.
    The corpus keys (``text_field``, ``label_field``, ...) are :class:`CorpusFields`.
    ``from_runs`` (``--from``): a run config or sweep file; what its runs read is stored too.
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = (
        "teacher",
        "data",
        "out",
        "distill_config",
        "from_runs",
    )

    teacher: str
    data: str
    out: str
    features: str | None = None
    distill_config: str | None = None
    from_runs: str | None = None
    dtype: str = "fp16"
    feature_dtypes: dict[str, str] | None = None
    codec: str = DEFAULT_CODEC
    topk: int | None = None  # alias of logits: topk:K
    logits: str | None = None  # dense | topk:K | sample:N[@T] | exact (cache/logits/sparse.py)
    task: str | None = None
    num_labels: int | None = None
    max_length: int | None = None  # None: 128, clipped to the teacher's positions
    batch_size: int = 32
    shard_size: int = 256
    device: str = "auto"
    overwrite: bool = False
    wait: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("teacher", "data", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.append(f"{name}: expected a non-empty string, got {getattr(self, name)!r}")
        self.check_corpus_fields(problems)
        if self.features is not None and self.distill_config is not None:
            problems.append(
                "features and distill_config both given: choose one way to say what to store"
            )
        check_choice(problems, "dtype", self.dtype, DTYPES, "cache dtype")
        if isinstance(self.feature_dtypes, Mapping):
            for kind, dtype in self.feature_dtypes.items():
                check_choice(problems, f"feature_dtypes.{kind}", dtype, DTYPES, "cache dtype")
        elif self.feature_dtypes is not None:
            problems.append(
                f"feature_dtypes: expected a mapping of feature kind to dtype, e.g. "
                f"{{hidden: int8}}, got {self.feature_dtypes!r}"
            )
        if self.max_length is not None:
            set_field(self, "max_length", check_int(problems, "max_length", self.max_length, 2))
        for name, minimum in (("batch_size", 1), ("shard_size", 1)):
            set_field(self, name, check_int(problems, name, getattr(self, name), minimum))
        for name in ("topk", "num_labels"):
            if getattr(self, name) is not None:
                set_field(self, name, check_int(problems, name, getattr(self, name), 1))
        if self.logits is not None and self.topk is not None:
            problems.append("topk and logits both given: --topk K is --logits topk:K")
        elif self.logits is not None:  # checked here, before a teacher is loaded
            try:
                parse_logits_mode(self.logits)
            except ConfigError as error:
                problems += [f"logits: {p}" for p in error.problems]
        check_bool(problems, "overwrite", self.overwrite)
        check_bool(problems, "wait", self.wait)
        raise_if_any(problems)


def load_precompute_config(
    config_path: str | None, flags: Mapping[str, Any], overrides: Sequence[str] = ()
) -> PrecomputeConfig:
    """Merge a YAML file, CLI flags (those not None win) and ``--set`` overrides, then validate
    (:func:`~cachebrew.validation.load_config`)."""
    return load_config(PrecomputeConfig, config_path, flags, overrides)


def resolve_feature_spec(
    cfg: PrecomputeConfig,
    vocab_size: int | None,
    runs: Mapping[str, DistillationConfig] | None = None,
) -> FeatureSpec:
    """What to store (:func:`~cachebrew.cache.format.reads.features_to_store`): ``features``,
    what ``distill_config`` and the runs of ``from_runs`` read; only ``logits`` without them.

    ``runs``: the distillation configs of ``from_runs``'s runs, by label, as the command layer
    loads them (:func:`cachebrew.runner.reads.distill_configs_of`); needed iff ``from_runs``.

    Raises:
        ConfigError: ``from_runs`` without ``runs``; invalid matches; unknown feature dtypes.
    """
    if cfg.from_runs is not None and runs is None:
        raise ConfigError(
            f"from_runs {cfg.from_runs}: pass its runs too, "
            "runs=cachebrew.runner.reads.distill_configs_of(from_runs)"
        )
    distill = cfg.distill_config
    return features_to_store(
        features=cfg.features,
        distill=None if distill is None else DistillationConfig.from_yaml(distill),
        runs=runs if cfg.from_runs is not None else None,
        logits_mode=cfg.logits or (f"topk:{cfg.topk}" if cfg.topk else None),
        vocab_size=vocab_size,
        codec=cfg.codec,
        dtype=cfg.dtype,
        feature_dtypes=cfg.feature_dtypes,
    )


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
    teacher = load_model(cfg.teacher, task=cfg.task, num_labels=cfg.num_labels, role="teacher")
    if teacher.tokenizer is None:
        raise ConfigError(f"teacher {cfg.teacher}: no tokenizer.json next to the weights")
    cfg = replace(cfg, max_length=resolve_max_length(cfg.max_length, teacher, cfg.teacher))
    corpus = read_corpus(cfg.data, **cfg.corpus_fields())
    spec = resolve_feature_spec(cfg, getattr(teacher.model.config, "vocab_size", None), runs)
    check_layers_exist(spec, getattr(teacher.model.config, "num_hidden_layers", None))
    device = rank_device(cfg.device, part.world)
    teacher.model.to(device)
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
        extra={"max_length": cfg.max_length, "label_names": corpus.label_names},
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


def check_layers_exist(spec: FeatureSpec, num_layers: int | None) -> None:
    """Refuse layers the teacher does not have, before any corpus is read or teacher run.

    ``hidden`` indices run 0..num_layers (0 = embeddings, as TextBrewer's adaptors);
    ``attention`` indices 0..num_layers - 1. Unknown depth (factory models) is checked later.
    """
    if num_layers is None:
        return
    problems = []
    for feature in spec:
        top = num_layers if feature.kind.startswith("hidden") else num_layers - 1
        bad = [layer for layer in feature.layers if layer > top]
        if bad:
            source = "hidden" if feature.kind.startswith("hidden") else "attention"
            problems.append(
                f"feature {feature.kind!r}: layers {bad} do not exist; the teacher gives "
                f"{top + 1} {source} layers (indices 0..{top})"
            )
    if problems:
        raise ConfigError(problems)


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


@torch.inference_mode()
def teacher_features(
    teacher: LoadedModel, spec: FeatureSpec, items: list[dict[str, Any]], device: torch.device
) -> list[dict[str, Any]]:
    """Run one padded batch; return per-example feature tensors (float32, CPU, unpadded).

    On CUDA the tensors are pinned host memory still being filled: wait for ``example[READY]``
    (a ``torch.cuda.Event``) before reading them.
    """
    pad_id = teacher.tokenizer.pad_token_id or 0
    padded = pad_batch(
        [{k: v for k, v in it.items() if k in _MODEL_INPUTS} for it in items], pad_id
    )
    batch = {k: v.to(device) for k, v in padded.items()}
    autocast = device.type == "cuda" and spec_dtype_is_half(spec)
    with torch.autocast(device.type, enabled=autocast):
        outputs = teacher.model(**batch)
    adapted = teacher.adaptor(batch, outputs)
    if is_exact(spec):  # store the final hidden state; its head gives the logits
        adapted = with_final_hidden(teacher.model, adapted)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    per_kind = {name: _extract(adapted, name, batch, lengths) for name in spec.input_names}
    examples: list[dict[str, Any]] = [
        {name: per_kind[name][b] for name in per_kind} for b in range(len(items))
    ]
    if device.type == "cuda":  # the writer thread waits for the copies, the teacher does not
        ready = torch.cuda.Event()
        ready.record()
        for example in examples:
            example[READY] = ready
    return examples


def _to_host(values: torch.Tensor) -> torch.Tensor:
    """A CUDA tensor copied into pinned host memory without blocking (see :data:`READY`);
    a CPU tensor as it is."""
    if not values.is_cuda:
        return values
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    return host.copy_(values, non_blocking=True)


def spec_dtype_is_half(spec: FeatureSpec) -> bool:
    """Whether every stored feature is 16-bit or less (then the teacher may run in autocast)."""
    return all(feature.dtype != "fp32" for feature in spec)


def _extract(
    adapted: Mapping[str, Any], name: str, batch: Mapping[str, torch.Tensor], lengths: list[int]
) -> list[torch.Tensor]:
    """One stored input (``logits``, ``hidden.4``, ``attention_sum.2`` ...) for each example."""
    kind, _, layer_text = name.partition(".")
    if kind == "logits":
        return _extract_logits(adapted, batch)
    source = "hidden" if kind.startswith("hidden") else "attention"
    layers = adapted.get(source)
    layer = int(layer_text)
    if layers is None or layer >= len(layers):
        available = 0 if layers is None else len(layers)
        raise ConfigError(
            f"feature {name!r}: the teacher gives {available} {source} layers "
            f"(indices 0..{available - 1}); choose layers in that range"
        )
    values = layers[layer].float()  # (B, L, D) or (B, H, L, L)
    if kind in ("attention_sum", "attention_mean"):  # reduce heads on the device, then copy
        values = values.sum(1) if kind == "attention_sum" else values.mean(1)  # (B, L, L)
    values = _to_host(values)
    out = []
    for b, n in enumerate(lengths):
        if kind == "hidden_cls":
            out.append(values[b, 0])
        elif source == "hidden" or kind != "attention":
            out.append(values[b, :n] if source == "hidden" else values[b, :n, :n])
        else:
            out.append(values[b, :, :n, :n])
    return out


def _extract_logits(
    adapted: Mapping[str, Any], batch: Mapping[str, torch.Tensor]
) -> list[torch.Tensor]:
    logits = adapted.get("logits")
    if isinstance(logits, list | tuple):
        if len(logits) != 1:
            raise ConfigError(
                f"the teacher adaptor gives {len(logits)} logits heads; cachebrew caches one"
            )
        logits = logits[0]
    if logits is None:
        raise ConfigError("feature 'logits': the teacher adaptor returns no 'logits'")
    logits = logits.float()
    if logits.dim() == 2:
        return [row.cpu() for row in logits]
    mask = adapted.get("logits_mask")
    mask = batch["attention_mask"] if mask is None else mask
    if isinstance(mask, list | tuple):
        mask = mask[0]
    return [logits[b][mask[b].bool()].cpu() for b in range(logits.size(0))]


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
