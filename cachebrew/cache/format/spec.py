"""What a cache stores: the feature spec, its CLI form and its derivation from a distill config.

A :class:`FeatureSpec` is a tuple of :class:`StoredFeature`, one per feature *kind*. Each kind
expands into one or more 2-D stored arrays ``[rows, width]`` (rows are concatenated over the
examples of a shard, see ``index.arrow``):

======================  ==========================  ===============================================
kind                    stored array(s)             rows per example, width
======================  ==========================  ===============================================
``logits``              ``logits``                  1 (sequence head) or valid positions, C
``logits`` + top-k      ``logits.topk_values``,     same rows; k, k, 1. ``logsumexp`` is over the
                        ``logits.topk_ids``,        full vocabulary of the *raw* logits (fp32)
                        ``logits.logsumexp``
``hidden``              ``hidden.<layer>``          tokens, D
``hidden_cls``          ``hidden_cls.<layer>``      1 (position 0, for ``pkd``), D
``attention``           ``attention.<layer>``       H*L*L flattened row-major (H, L, L), 1
``attention_sum``       ``attention_sum.<layer>``   L*L flattened (L, L) head-sum, 1
``attention_mean``      ``attention_mean.<layer>``  L*L flattened (L, L) head-mean of scores, 1
======================  ==========================  ===============================================

Attention is stored flat (width 1) because its natural width, L, differs between examples;
``restore_shape`` in :mod:`cachebrew.cache.format.shapes` turns rows back into ``(H, L, L)``.
``int8`` arrays carry a companion ``<array>.scale`` array ``[rows, 1]`` (fp32 per-row absmax / 127).

Logit reductions: ``raw`` keeps the logits (needed by ``kd mse`` and the ``flsw`` temperature);
``logprobs`` stores ``log_softmax(logits)`` at T=1, exact for ``ce``/``kl`` at any temperature.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachebrew.cache.format.codecs import DEFAULT_CODEC
from cachebrew.cache.logits.modes import logits_problems
from cachebrew.cache.logits.sparse import (
    TOPK_LAYOUT,
    parse_logits_mode,
    sparse_array_dtype,
    topk_layout_problems,
)
from cachebrew.errors import ConfigError

KINDS: tuple[str, ...] = (
    "logits",
    "hidden",
    "hidden_cls",
    "attention",
    "attention_sum",
    "attention_mean",
)
LAYERED_KINDS: tuple[str, ...] = KINDS[1:]
FLAT_KINDS: tuple[str, ...] = ("attention", "attention_sum", "attention_mean")
DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
CODECS: tuple[str, ...] = ("lz4-bitshuffle", "zstd", "lz4", "blosc-zstd", "none")
REDUCTIONS: tuple[str, ...] = ("raw", "logprobs")
TOPK_SUFFIXES: tuple[str, ...] = ("topk_values", "topk_ids", "logsumexp")
# Vocabularies up to this size store top-k ids as uint16.
UINT16_VOCAB_LIMIT = 65536


@dataclass(frozen=True)
class StoredFeature:
    """One feature kind the cache stores, with its layers, dtype, codec and reduction.

    Args:
        kind: one of :data:`KINDS`.
        layers: teacher layer indices (``layer_T``); empty for ``logits``, required otherwise.
        dtype: storage dtype, one of :data:`DTYPES`.
        codec: compression codec, one of :data:`CODECS`.
        reduction: ``logits`` only: ``'raw'`` or ``'logprobs'``.
        topk: ``logits`` only: keep the k largest entries per row (+ ids + logsumexp).
        vocab_size: ``logits`` only, optional: with top-k, ids are stored as uint16 when
            ``vocab_size <= 65536``, else int32.
        logits_mode: ``logits`` only: ``dense``, ``topk:K`` or ``sample:N[@T]``
            (:mod:`cachebrew.cache.logits.sparse`: ids bit-packed at ``ceil(log2 V)`` bits;
            needs ``vocab_size``). None: the ``topk`` field decides (ids uint16/int32).
        topk_layout: ``topk:K`` only: 1 (by value, fixed-width ids) or 2 (by id, delta ids;
            the default for new caches). A manifest without it is layout 1.

    Raises:
        ConfigError: every invalid field, each naming the value and the valid choices.
    """

    kind: str
    layers: tuple[int, ...] = ()
    dtype: str = "fp16"
    codec: str = DEFAULT_CODEC
    reduction: str | None = None
    topk: int | None = None
    vocab_size: int | None = None
    logits_mode: str | None = None
    topk_layout: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(sorted(set(self.layers))))
        if self.logits_mode is not None and self.kind == "logits":
            mode = parse_logits_mode(self.logits_mode)
            object.__setattr__(self, "logits_mode", str(mode))
            object.__setattr__(self, "topk", mode.size if mode.kind == "topk" else None)
        topk_mode = self.kind == "logits" and str(self.logits_mode).startswith("topk:")
        layout = (self.topk_layout or TOPK_LAYOUT) if topk_mode else None
        object.__setattr__(self, "topk_layout", layout)
        if self.kind == "logits" and (self.reduction is None or self.logits_mode == "exact"):
            object.__setattr__(self, "reduction", "raw")
        problems = _feature_problems(self)
        if problems:
            raise ConfigError(problems)

    @property
    def name(self) -> str:
        """The feature's name in specs and reports (its kind)."""
        return self.kind

    @property
    def input_names(self) -> tuple[str, ...]:
        """Keys the writer expects in ``features`` for this kind (``logits``, ``hidden.4`` ...)."""
        if self.kind == "logits":
            return ("logits",)
        return tuple(f"{self.kind}.{layer}" for layer in self.layers)

    @property
    def data_arrays(self) -> tuple[str, ...]:
        """Stored arrays holding data (each has offsets in the index), scale arrays excluded."""
        if self.kind == "logits" and self.logits_mode is not None:
            return parse_logits_mode(self.logits_mode).arrays
        if self.kind == "logits" and self.topk:
            return tuple(f"logits.{s}" for s in TOPK_SUFFIXES)
        return self.input_names

    @property
    def topk_ids_dtype(self) -> str:
        """Numpy dtype of ``logits.topk_ids``."""
        small = self.vocab_size is not None and self.vocab_size <= UINT16_VOCAB_LIMIT
        return "uint16" if small else "int32"

    def array_dtype(self, array: str) -> str:
        """Storage dtype name of one of this feature's arrays (``'fp32'`` ... or an int dtype)."""
        if self.logits_mode is not None and array.endswith(("_ids", "_counts", "_values")):
            mode = parse_logits_mode(self.logits_mode)
            layout = self.topk_layout or 1
            return sparse_array_dtype(array, mode, self.vocab_size or 2, layout, self.dtype)
        if array.endswith(".topk_ids"):
            return self.topk_ids_dtype
        if array.endswith(".logsumexp"):
            return "fp32"
        return self.dtype

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return {
            "kind": self.kind,
            "layers": list(self.layers),
            "dtype": self.dtype,
            "codec": self.codec,
            "reduction": self.reduction,
            "topk": self.topk,
            "vocab_size": self.vocab_size,
            **({"logits_mode": self.logits_mode} if self.logits_mode is not None else {}),
            **({"topk_layout": self.topk_layout} if self.topk_layout is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredFeature:
        """Inverse of :meth:`to_dict`; unknown keys are an error; no ``topk_layout`` is 1."""
        unknown = sorted(set(data) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ConfigError(f"unknown stored-feature fields {unknown} in {dict(data)!r}")
        layout = data.get("topk_layout", 1)  # written before layouts were recorded
        return cls(**{**data, "layers": tuple(data.get("layers") or ()), "topk_layout": layout})


def _feature_problems(feature: StoredFeature) -> list[str]:
    kind = feature.kind
    if kind not in KINDS:
        return [f"unknown feature {kind!r}; choose one of {list(KINDS)}"]
    problems = []
    if feature.dtype not in DTYPES:
        problems.append(f"{kind}: unknown dtype {feature.dtype!r}; choose one of {list(DTYPES)}")
    if feature.codec not in CODECS:
        problems.append(f"{kind}: unknown codec {feature.codec!r}; choose one of {list(CODECS)}")
    if any(not _is_int(x) or x < 0 for x in feature.layers):
        problems.append(f"{kind}: layers must be non-negative integers, got {feature.layers!r}")
    if kind in LAYERED_KINDS and not feature.layers:
        problems.append(f"{kind}: needs at least one layer, e.g. '{kind}:0,4'")
    if kind == "logits":
        problems += _logits_problems(feature)
    elif feature.reduction is not None or feature.topk is not None:
        problems.append(f"{kind}: reduction and topk apply to logits only")
    if kind in FLAT_KINDS and feature.dtype == "int8":
        problems.append(
            f"{kind}: int8 is not supported for attention (stored flat, so a per-row scale "
            "is per value; and linear int8 zeroes small probabilities, mean KL 1.1e-2 "
            "measured); use fp16 or bf16"
        )
    return problems


def _logits_problems(feature: StoredFeature) -> list[str]:
    problems = logits_problems(
        layers=feature.layers,
        reduction=feature.reduction,
        reductions=REDUCTIONS,
        topk=feature.topk,
        vocab_size=feature.vocab_size,
        logits_mode=feature.logits_mode,
    )
    return problems + topk_layout_problems(feature.topk_layout)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FeatureSpec:
    """The full list of stored features (at most one :class:`StoredFeature` per kind).

    Raises:
        ConfigError: empty spec or a kind given twice.
    """

    features: tuple[StoredFeature, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        kinds = [f.kind for f in self.features]
        problems = [
            f"feature {k!r} is given twice" for k in sorted(set(kinds)) if kinds.count(k) > 1
        ]
        if not self.features:
            problems.append("the feature spec is empty: store logits and/or at least one layer")
        if problems:
            raise ConfigError(problems)
        order = {k: i for i, k in enumerate(KINDS)}
        object.__setattr__(
            self, "features", tuple(sorted(self.features, key=lambda f: order[f.kind]))
        )

    def __iter__(self) -> Iterator[StoredFeature]:
        return iter(self.features)

    def get(self, kind: str) -> StoredFeature | None:
        """The stored feature of ``kind``, or None."""
        return next((f for f in self.features if f.kind == kind), None)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every key :meth:`CacheWriter.add` expects in ``features``."""
        return tuple(n for f in self.features for n in f.input_names)

    @property
    def data_arrays(self) -> tuple[str, ...]:
        """Every stored data array (offsets in the index), scale arrays excluded."""
        return tuple(n for f in self.features for n in f.data_arrays)

    def feature_of(self, array: str) -> StoredFeature:
        """The stored feature an array name (``hidden.4``, ``logits.topk_ids``) belongs to."""
        kind = array.split(".", 1)[0]
        feature = self.get(kind)
        if feature is None or array not in feature.data_arrays:
            raise KeyError(array)
        return feature

    def to_cli(self) -> str:
        """The spec in the ``parse_feature_spec`` form (without dtype/codec/topk)."""
        parts = []
        for f in self.features:
            if f.kind == "logits":
                parts.append(f"logits:{f.reduction}")
            else:
                parts.append(f"{f.kind}:" + ",".join(str(x) for x in f.layers))
        return ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return {"features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(StoredFeature.from_dict(f) for f in data["features"]))


def parse_feature_spec(
    text: str,
    *,
    dtype: str = "fp16",
    codec: str = DEFAULT_CODEC,
    topk: int | None = None,
    vocab_size: int | None = None,
) -> FeatureSpec:
    """Parse the CLI form, e.g. ``"logits,hidden:0,4,8,12,attention:4,8,12"``.

    Grammar: comma-separated items; ``kind:N`` starts a feature with its first layer, a bare
    integer adds a layer to the feature before it, ``logits`` may take ``:raw`` (default) or
    ``:logprobs``. ``dtype``/``codec`` apply to every feature, ``topk`` to logits.

    Raises:
        ConfigError: every unknown name, bad layer or bad option at once, with valid choices.
    """
    layers: dict[str, list[int]] = {}
    reduction: str | None = None
    problems: list[str] = []
    current: str | None = None
    for item in (s.strip() for s in text.split(",")):
        current, reduction = _parse_item(item, current, layers, reduction, problems)
    if problems:
        raise ConfigError([f"feature spec {text!r}: {p}" for p in problems])
    features = []
    for kind, kind_layers in layers.items():
        if kind == "logits":
            features.append(StoredFeature("logits", (), dtype, codec, reduction, topk, vocab_size))
        else:
            features.append(StoredFeature(kind, tuple(kind_layers), dtype, codec))
    return FeatureSpec(tuple(features))


def _parse_item(
    item: str,
    current: str | None,
    layers: dict[str, list[int]],
    reduction: str | None,
    problems: list[str],
) -> tuple[str | None, str | None]:
    name, sep, value = item.partition(":")
    if not sep and current is not None and item.lstrip("-").isdigit():
        name, value = current, item
    elif name not in KINDS:
        problems.append(f"unknown feature {item!r}; choose one of {list(KINDS)}")
        return None, reduction
    layers.setdefault(name, [])
    if name == "logits":
        if value and value not in REDUCTIONS:
            problems.append(f"logits takes ':raw' or ':logprobs', got {item!r}")
        return None, value or reduction
    if not value:
        problems.append(f"{name!r} needs layers, e.g. '{name}:0,4,8'")
    elif not value.isdigit():
        problems.append(
            f"bad layer {value!r} for {name}; layers are non-negative integers, e.g. {name}:0,4"
        )
    else:
        layers[name].append(int(value))
    return name, reduction


# ------------------------------------------------------------------------ from a distill config

# Match losses whose teacher side needs only a reduction of the feature (exact, see DESIGN §4).
_REDUCED_KIND: dict[tuple[str, str], str] = {
    ("hidden", "pkd"): "hidden_cls",
    ("attention", "attention_mse_sum"): "attention_sum",
    ("attention", "attention_ce_mean"): "attention_mean",
}
_MATCH_FEATURES = ("hidden", "attention")


def feature_spec_from_matches(
    kd_loss_type: str | None,
    temperature_scheduler_name: str | None,
    matches: Sequence[Mapping[str, Any]],
    *,
    dtype: str = "fp16",
    codec: str = DEFAULT_CODEC,
    topk: int | None = None,
    vocab_size: int | None = None,
) -> FeatureSpec:
    """Derive what to store from a distillation config given as plain data.

    Logits: ``log_softmax`` for ``ce``/``kl`` (exact at any temperature); raw for ``mse``,
    ``multilabel``, unknown (user-registered) kd losses, or when the temperature scheduler is
    ``flsw`` (it needs the raw logit norms). ``kd_loss_type=None`` stores no logits.
    Matches: ``pkd`` -> ``hidden_cls``, ``attention_mse_sum`` -> ``attention_sum``,
    ``attention_ce_mean`` -> ``attention_mean``; every other loss (incl. user-registered ones)
    stores the full ``feature`` at its ``layer_T`` (one int, or two for fsp/gram/nst/mmd).

    Args:
        kd_loss_type: e.g. ``'ce'``, ``'mse'``, ``'kl'``, or None.
        temperature_scheduler_name: e.g. ``'none'``, ``'flsw'``, ``'cwsm'``, or None.
        matches: dicts with keys ``feature``, ``loss`` and ``layer_T`` (int or [a, b]).

    Raises:
        ConfigError: a match with an unknown feature or a bad ``layer_T``, or nothing to store.
    """
    layers: dict[str, set[int]] = {}
    problems: list[str] = []
    for i, match in enumerate(matches):
        kind, match_layers = _match_storage(i, match, problems)
        if kind is not None:
            layers.setdefault(kind, set()).update(match_layers)
    if problems:
        raise ConfigError(problems)
    features = [StoredFeature(k, tuple(v), dtype, codec) for k, v in layers.items()]
    if kd_loss_type is not None:
        exact_logprobs = kd_loss_type in ("ce", "kl") and temperature_scheduler_name != "flsw"
        reduction = "logprobs" if exact_logprobs else "raw"
        features.append(StoredFeature("logits", (), dtype, codec, reduction, topk, vocab_size))
    if not features:
        raise ConfigError("nothing to store: no kd loss and no intermediate_matches")
    return FeatureSpec(tuple(features))


def _match_storage(
    i: int, match: Mapping[str, Any], problems: list[str]
) -> tuple[str | None, list[int]]:
    where = f"intermediate_matches[{i}]"
    feature, loss = match.get("feature"), match.get("loss")
    if feature not in _MATCH_FEATURES:
        problems.append(
            f"{where}: unknown feature {feature!r}; choose one of {list(_MATCH_FEATURES)}"
        )
        return None, []
    layer_t = match.get("layer_T")
    values = list(layer_t) if isinstance(layer_t, list | tuple) else [layer_t]
    layers = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
    if not values or len(values) > 2 or len(layers) != len(values):
        problems.append(
            f"{where}: layer_T must be a non-negative int or a list of two, got {layer_t!r}"
        )
        return None, []
    return _REDUCED_KIND.get((str(feature), str(loss)), str(feature)), layers


def layer_names(names: Iterable[str]) -> list[str]:
    """Expand CLI-style names (``'hidden:0,4'``, ``'logits'``) or array names into array names."""
    out: list[str] = []
    for name in names:
        if ":" in name and not name.startswith("logits"):
            out += parse_feature_spec(name).input_names
        elif ":" in name:
            out.append("logits")
        else:
            out.append(name)
    return out
