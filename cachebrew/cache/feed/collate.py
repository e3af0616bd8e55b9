"""Decode the examples of chosen batches and collate them into TextBrewer-shaped batches.

Used by :class:`~cachebrew.cache.feed.dataset.CacheDataset`, which decides the order
(:class:`EpochPlan`). :class:`EpochReader` decodes runs chunk-aligned in stream order through a
:class:`ChunkCache`; :func:`collate_examples` pads them into one batch.

An *example* is what :meth:`ShardReader.record` returns: ``example_id``, ``input_ids`` (L,)
int64 (the teacher's tokens), ``label``, ``length`` L and ``features`` ``{array name: (rows,
width)}`` float32 (top-k ids int64). A batch is::

    {"student": {"input_ids": (B, L_S), "attention_mask": (B, L_S), ["token_type_ids"],
                 ["labels": (B,) or (B, L_S) padded with -100 or (B, C) multi-label]},
     "teacher": {"input_ids": (B, L), "attention_mask": (B, L), ["token_type_ids"]},
     "teacher_cache": {"logits": (B, C) or (N_sel, C), "hidden": [...], "attention": [...],
                       "inputs_mask": (B, L)},        # absent in online mode
     "example_ids": [str] * B}

``hidden`` and ``attention`` are lists indexed by the teacher layer (``results_T[feature]
[layer_T]`` in the distiller), ``None`` at layers the cache does not hold: a list, not a dict,
because the distiller checks ``layer_T < len(results_T[feature])``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cachebrew.cache.feed.batch_copy import copy_pool, pad_stored_rows, scale_rows
from cachebrew.cache.feed.gpu_feed import PinnedPool, packed_layer_list
from cachebrew.cache.format.codecs import decode
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.logits.exact import ExactLogits, LMHead, read_exact_logits
from cachebrew.cache.logits.rows import topk_logprobs
from cachebrew.cache.logits.sparse import SparseLogits, parse_logits_mode, read_sparse_logits
from cachebrew.cache.read.buffers import BufferPool
from cachebrew.errors import CacheError, CacheMismatchError, ConfigError

if TYPE_CHECKING:
    from cachebrew.cache.read.reader import CacheReader

LABEL_PAD = -100


@dataclass(frozen=True)
class FeatureLayout:
    """Which stored array serves each teacher output of a batch.

    Attributes:
        logits: ``None`` (no logits), ``"dense"`` (``logits``: raw or log-probs, passed as
            stored), ``"topk"`` (``logits.topk_*``, rebuilt into full log-probs) or
            ``"sparse"`` (a ``--logits topk:K|sample:N|exact`` cache: a :class:`SparseLogits`
            or an :class:`ExactLogits` with ``head``, never a dense (rows, V) tensor).
        logits_mode: the cache's ``--logits`` mode (``"sparse"`` only).
        logits_reduction: ``"raw"`` or ``"logprobs"``.
        num_classes: V, the full width a top-k row is rebuilt to.
        hidden: teacher layer -> ``hidden.<l>`` (B, L, D) or ``hidden_cls.<l>`` (B, D).
        attention: teacher layer -> ``attention.<l>`` (B, H, L, L) or a head-reduced
            ``attention_sum.<l>`` / ``attention_mean.<l>`` (B, L, L).
    """

    logits: str | None = None
    logits_reduction: str = "raw"
    logits_mode: str | None = None
    num_classes: int | None = None
    hidden: dict[int, str] = field(default_factory=dict)
    attention: dict[int, str] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    head: LMHead | None = field(default=None, compare=False, repr=False)  # exact mode only

    @property
    def arrays(self) -> tuple[str, ...]:
        """The stored data arrays a cached batch reads (others are never decoded)."""
        names: list[str] = []
        if self.logits == "dense":
            names.append("logits")
        elif self.logits == "topk":
            names += ["logits.topk_values", "logits.topk_ids", "logits.logsumexp"]
        elif self.logits == "sparse":
            names += parse_logits_mode(str(self.logits_mode)).arrays
        return (*names, *self.hidden.values(), *self.attention.values())

    @property
    def stored_arrays(self) -> tuple[str, ...]:
        """:attr:`arrays` plus the ``.scale`` companion of every int8 array."""
        scales = [f"{n}.scale" for n in self.arrays if self.dtypes.get(n) == "int8"]
        return (*self.arrays, *scales)


def reader_layout(reader: CacheReader, num_classes: int | None = None) -> FeatureLayout:
    """:func:`feature_layout` of ``reader``'s cache, with its LM head for an ``exact`` cache."""
    layout = feature_layout(reader.spec, num_classes)
    return replace(layout, head=reader.lm_head()) if layout.logits_mode == "exact" else layout


def feature_layout(spec: FeatureSpec, num_classes: int | None = None) -> FeatureLayout:
    """The layout of a cache's batches; a full feature wins over its reduction at one layer.

    Raises:
        CacheMismatchError: ``attention_sum`` and ``attention_mean`` both stored for a layer
            without the full ``attention`` (which one a match wants is ambiguous).
        ConfigError: top-k logits without a known vocabulary size (pass ``num_classes``).
    """
    by_kind = {f.kind: f.layers for f in spec}
    hidden = {layer: f"hidden_cls.{layer}" for layer in by_kind.get("hidden_cls", ())}
    hidden.update({layer: f"hidden.{layer}" for layer in by_kind.get("hidden", ())})
    attention: dict[int, str] = {}
    ambiguous = []
    for kind in ("attention_sum", "attention_mean"):
        for layer in by_kind.get(kind, ()):
            if layer in attention and layer not in by_kind.get("attention", ()):
                ambiguous.append(layer)
            attention[layer] = f"{kind}.{layer}"
    if ambiguous:
        raise CacheMismatchError(
            f"the cache stores both attention_sum and attention_mean for layers {ambiguous} "
            "but not the full attention, so which one a match uses is ambiguous; rerun "
            "precompute for one reduction, or store the full attention for these layers"
        )
    attention.update({layer: f"attention.{layer}" for layer in by_kind.get("attention", ())})
    hidden, attention = dict(sorted(hidden.items())), dict(sorted(attention.items()))
    dtypes = {name: spec.feature_of(name).array_dtype(name) for name in spec.data_arrays}
    logits = spec.get("logits")
    if logits is None:
        return FeatureLayout(hidden=hidden, attention=attention, dtypes=dtypes)
    classes = num_classes if num_classes is not None else logits.vocab_size
    if logits.topk and classes is None:
        raise ConfigError(
            f"the cache stores top-{logits.topk} logits without their vocabulary size; pass "
            "num_classes= (the teacher's number of logits) to rebuild full rows"
        )
    sparse = logits.logits_mode not in (None, "dense")
    return FeatureLayout(
        logits="sparse" if sparse else "topk" if logits.topk else "dense",
        logits_reduction=str(logits.reduction),
        logits_mode=logits.logits_mode if sparse else None,
        num_classes=classes,
        hidden=hidden,
        attention=attention,
        dtypes=dtypes,
    )


@dataclass(frozen=True)
class CollateOptions:
    """How to build model inputs (see ``CacheDataset``)."""

    pad_id: int = 0
    sep_id: int | None = None
    with_token_type_ids: bool = False
    device: str | None = None
    # Reused padded output memory of one pass (CPU only); None allocates per batch.
    buffers: BufferPool | None = field(default=None, compare=False)
    # An executor padding the arrays of a batch in parallel (the copies release the GIL).
    pool: Any = field(default=None, compare=False)
    # Reused (pinned) host buffers of the packed CUDA path; None: a pool per batch.
    pinned: PinnedPool | None = field(default=None, compare=False)


def collate_examples(
    examples: Sequence[Mapping[str, Any]],
    layout: FeatureLayout | None,
    options: CollateOptions,
    student_items: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One batch (module docstring) from B decoded examples, in the given order.

    ``layout=None`` is online mode: no ``teacher_cache`` (a live teacher runs on ``teacher``).
    """
    ids = [str(e["example_id"]) for e in examples]
    teacher = model_inputs([e["input_ids"] for e in examples], options)
    if student_items is None:
        student = dict(teacher)
        labels = collate_labels([e["label"] for e in examples], ids, student["input_ids"].shape[1])
    else:
        items = [student_items[i] for i in ids]
        student = student_model_inputs(items, options)
        labels = collate_labels(
            [i.get("labels") for i in items], ids, student["input_ids"].shape[1]
        )
    if labels is not None:
        student["labels"] = labels
    batch: dict[str, Any] = {"student": student, "teacher": teacher}
    if layout is not None:
        batch["teacher_cache"] = teacher_outputs(
            examples, layout, teacher["attention_mask"], options.device, options.buffers,
            options.pool, options.pinned,
        )  # fmt: skip
    batch["example_ids"] = ids
    return batch


# ---------------------------------------------------------------------------- model inputs


def pad_sequences(sequences: Sequence[Any], pad_value: int) -> torch.Tensor:
    """Right-pad 1-D integer sequences to the longest: (B, L) int64."""
    length = max((len(s) for s in sequences), default=0)
    out = np.full((len(sequences), length), pad_value, dtype=np.int64)
    for b, sequence in enumerate(sequences):
        out[b, : len(sequence)] = sequence
    return torch.from_numpy(out)


def token_type_ids(input_ids: torch.Tensor, lengths: torch.Tensor, sep_id: int) -> torch.Tensor:
    """BERT segment ids (B, L): 0 up to and including the first ``sep_id``, then 1; 0 on padding."""
    positions = torch.arange(input_ids.shape[1])
    is_sep = (input_ids == sep_id) & (positions < lengths[:, None])
    first_sep = torch.where(is_sep.any(1), is_sep.int().argmax(1), lengths)  # (B,)
    second = (positions > first_sep[:, None]) & (positions < lengths[:, None])
    return second.long()


def model_inputs(sequences: Sequence[Any], options: CollateOptions) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` (and ``token_type_ids``) of the teacher's tokens."""
    input_ids = pad_sequences(sequences, options.pad_id)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if options.with_token_type_ids:
        assert options.sep_id is not None  # checked by CacheDataset
        inputs["token_type_ids"] = token_type_ids(input_ids, lengths, options.sep_id)
    return inputs


def student_model_inputs(
    items: Sequence[Mapping[str, Any]], options: CollateOptions
) -> dict[str, torch.Tensor]:
    """Pad pre-tokenized student items (their own tokenizer); ``labels`` are handled apart."""
    inputs = model_inputs([item["input_ids"] for item in items], options)
    for key in items[0]:
        if key not in ("input_ids", "labels"):
            inputs[key] = pad_sequences([item[key] for item in items], 0)
    return inputs


def collate_labels(labels: Sequence[Any], ids: Sequence[str], length: int) -> torch.Tensor | None:
    """(B,) class ids (long) or targets (float), (B, L) token labels padded with -100, or
    (B, C) float multi-label targets; None when no example has a label.

    Raises:
        CacheError: some examples of the batch have a label and others do not.
    """
    missing = [i for i, label in zip(ids, labels, strict=True) if label is None]
    if len(missing) == len(labels):
        return None
    if missing:
        raise CacheError(
            f"examples {missing[:5]} have no label but others in the batch do; select labelled "
            "examples with example_ids="
        )
    values = [np.asarray(label) for label in labels]
    if values[0].ndim == 0:
        array = np.stack(values)
        return torch.from_numpy(array.astype(np.float32 if array.dtype.kind == "f" else np.int64))
    if values[0].dtype.kind == "f":  # multi-label targets (B, C)
        return torch.from_numpy(np.stack(values).astype(np.float32))
    out = np.full((len(values), length), LABEL_PAD, dtype=np.int64)
    for b, value in enumerate(values):
        out[b, : len(value)] = value
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------- teacher outputs


def teacher_outputs(
    examples: Sequence[Mapping[str, Any]],
    layout: FeatureLayout,
    inputs_mask: torch.Tensor,
    device: str | None = None,
    buffers: BufferPool | None = None,
    pool: Any = None,
    pinned: PinnedPool | None = None,
) -> dict[str, Any]:
    """The ``teacher_cache`` entry: adaptor keys only (the identity adaptor validates them).

    ``device`` ``"cuda[:i]"`` packs hidden states and attention unpadded in their stored dtype
    into reused ``pinned`` host buffers, moves them non-blocking and pads and casts them to
    float32 on the GPU (:mod:`cachebrew.cache.feed.gpu_feed`); else they are cast on the CPU inside
    the padding copy (:mod:`cachebrew.cache.feed.batch_copy`), into ``buffers``. ``pool`` (an
    executor) pads or packs the arrays in parallel; the values do not change.
    """
    lengths = [int(e["length"]) for e in examples]
    width = int(inputs_mask.shape[1])
    features = [e["features"] for e in examples]
    out: dict[str, Any] = {}
    if layout.logits is not None:
        out["logits"] = _logits(features, layout)
    for kind, arrays in (("hidden", layout.hidden), ("attention", layout.attention)):
        if not arrays:
            continue
        on_gpu = device is not None and device.startswith("cuda")
        if on_gpu or pinned is not None:  # a pinned pool alone: the packed path on the CPU
            pinned = pinned if pinned is not None else PinnedPool()
            out[kind] = packed_layer_list(
                arrays, features, lengths, width, layout.dtypes, device or "cpu", pinned, pool
            )
        else:
            out[kind] = _layer_list(arrays, features, lengths, width, layout, buffers, pool)
    out["inputs_mask"] = inputs_mask
    return out


def _logits(
    features: Sequence[Mapping[str, np.ndarray]], layout: FeatureLayout
) -> torch.Tensor | SparseLogits | ExactLogits:
    """(B, C) for a sequence head; (N_sel, C), every example's rows in batch order, else."""
    if layout.logits == "dense":
        return _decoded(features, "logits", layout)
    assert layout.num_classes is not None
    if layout.logits == "sparse":
        mode = parse_logits_mode(str(layout.logits_mode))
        arrays = {name: _decoded(features, name, layout) for name in mode.arrays}
        if mode.kind == "exact":
            return read_exact_logits(arrays, layout.head)
        return read_sparse_logits(arrays, mode, layout.num_classes, layout.logits_reduction)
    return rebuild_topk(
        _decoded(features, "logits.topk_values", layout),
        _decoded(features, "logits.topk_ids", layout),
        _decoded(features, "logits.logsumexp", layout),
        layout.num_classes,
        layout.logits_reduction,
    )


def _decoded(
    features: Sequence[Mapping[str, np.ndarray]], name: str, layout: FeatureLayout
) -> torch.Tensor:
    """Every example's rows of a small array, concatenated and decoded (float32 / int64 ids)."""
    values = np.concatenate([f[name] for f in features])
    if values.dtype in (np.float32, np.int64):  # already decoded (CacheReader examples)
        return torch.from_numpy(values)
    scale = (
        np.concatenate([f[f"{name}.scale"] for f in features])
        if f"{name}.scale" in features[0]
        else None
    )
    return torch.from_numpy(decode(values, scale, layout.dtypes.get(name, str(values.dtype))))


def rebuild_topk(
    values: torch.Tensor,
    ids: torch.Tensor,
    logsumexp: torch.Tensor,
    num_classes: int,
    reduction: str,
) -> torch.Tensor:
    """Full float32 log-probabilities (rows, V) from stored top-k rows
    (:func:`cachebrew.cache.logits.rows.topk_logprobs`: the tail mass spread evenly).

    Args:
        values: (rows, k) stored top-k values; ids: (rows, k) int64; logsumexp: (rows, 1).
        num_classes: V.
        reduction: ``"raw"`` (``values - logsumexp`` are the log-probs) or ``"logprobs"``.
    """
    logp = values - logsumexp if reduction == "raw" else values  # (rows, k)
    return topk_logprobs(logp, ids, num_classes)


def _layer_list(
    arrays: Mapping[int, str],
    features: Sequence[Mapping[str, np.ndarray]],
    lengths: Sequence[int],
    width: int,
    layout: FeatureLayout,
    buffers: BufferPool | None = None,
    pool: Any = None,
) -> list[torch.Tensor | None]:
    """Padded per-layer float32 tensors, indexed by teacher layer (None where nothing is stored).

    Rows may be float32 or stored (fp16, bf16 as uint16, int8 with a ``.scale`` companion):
    the cast to float32 happens inside the one padding copy, with no decoded intermediate.
    With ``pool`` the padding copies of the arrays run in parallel.
    """

    def pad(name: str) -> torch.Tensor:
        rows = [f[name] for f in features]
        dtype = layout.dtypes.get(name, "fp32")
        return pad_stored_rows(
            name, rows, lengths, width, dtype, scale_rows(features, name), buffers
        )

    names = list(arrays.values())
    pool = copy_pool(pool, features, names)
    padded = list(pool.map(pad, names)) if pool is not None else [pad(name) for name in names]
    layers: list[torch.Tensor | None] = [None] * (max(arrays) + 1)
    for layer, tensor in zip(arrays, padded, strict=True):
        layers[layer] = tensor
    return layers
