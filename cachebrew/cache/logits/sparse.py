"""Sparse logit storage for large vocabularies: ``--logits topk:K``, ``sample:N`` and ``exact``.

A language model's teacher row is a distribution over V = 32k-256k ids; storing it densely costs
V x 2 bytes per token. The sparse modes keep what a KD loss needs (DESIGN §4):

``topk:K``
    ``logits.topk_values`` (rows, K) in the feature's dtype (fp16 by default), **sorted
    descending**, raw logits or log-probs per the feature's reduction; ``logits.topk_ids``
    (rows, K) bit-packed at ``b = max(8, ceil(log2 V))`` bits per id (dtype ``ids<b>``, stored
    as uint8 bytes, ``ceil(K * b / 8)`` per row); ``logits.logsumexp`` (rows, 1) fp32 over the
    full vocabulary at T = 1, so the tail mass ``1 - sum(top-k probabilities)`` is exact at T=1.
``sample:N[@T]``
    Random-sampling KD (Anshumann et al., ACL 2025, "Sparse Logit Sampling"): N ids drawn with
    replacement from ``softmax(logits / T)`` (T = 1 unless given), stored as the distinct ids
    ``logits.sample_ids`` (packed as above) and their counts ``logits.sample_counts`` (uint8,
    uint16 for N > 255), sorted by count, then id; unused slots have count 0. ``counts / N`` is
    an unbiased estimate of the teacher's distribution at temperature T. The draw is seeded by
    a hash of the row, so a cache's content does not depend on batch size, order or ranks.

``exact``
    The teacher's final hidden state ``logits.hidden`` (rows, H) in the feature's dtype plus its
    LM head stored once per cache (:mod:`cachebrew.cache.logits.exact`); the KD loss recomputes
    the logits in vocabulary chunks (:mod:`cachebrew.distill.exact_kd`).

An id that does not fit ``b`` bits (a teacher with more logits than its ``vocab_size``) is
refused with a :class:`~cachebrew.errors.CacheError` naming the id, the width and the fix.

Top-k layouts (``topk_layout`` in the manifest's logits feature):

1. the arrays above, entries sorted by descending value, ids at fixed width (caches written
   before layout 2; still read).
2. (default) entries sorted by ascending **id**, values permuted alongside; ids stored as
   deltas from the previous id of the row (the first from 0) in uint32 byte planes (dtype
   ``ids_delta``: per row all low bytes, then the next ...), so the high planes are runs of
   zeros for the codec; fp16 values as two byte planes (dtype ``fp16_planes``: sign/exponent
   bytes compress apart from the noisy mantissa bytes). Lossless (docs/benchmarks-history.md, "Large-
   vocabulary logit storage"). :func:`read_sparse_logits` restores descending-value order, so the losses
   receive the same rows from both layouts.

Lossy value codes, opt-in: ``topk:K:q4``, ``topk:K:q5``, ``topk:K:q8`` store layout 2 with the
values as 4/5/8-bit codes of the log-probabilities that keep each row's top-k mass (so the
tail bucket stays the teacher's) and ids as varint deltas: :mod:`cachebrew.cache.logits.topk_codes`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from cachebrew.cache.logits.modes import MODES as MODES
from cachebrew.cache.logits.modes import SAMPLE_ARRAYS as SAMPLE_ARRAYS
from cachebrew.cache.logits.modes import TOPK_ARRAYS as TOPK_ARRAYS
from cachebrew.cache.logits.modes import LogitsMode
from cachebrew.cache.logits.modes import parse_logits_mode as parse_logits_mode
from cachebrew.cache.logits.topk_codes import VARINT_IDS, code_dtype, decode_values, encode_values
from cachebrew.errors import CacheError

PACKED_PREFIX = "ids"
DELTA_IDS = "ids_delta"
FP16_PLANES = "fp16_planes"  # layout 2's fp16 values: the two byte planes of each row apart
TOPK_LAYOUTS: tuple[int, ...] = (1, 2)
TOPK_LAYOUT = 2  # what new caches are written with
#: the keys of logits reduced on the teacher's side (:mod:`cachebrew.teacher.sparse_rows`)
REDUCED_KEYS: dict[str, tuple[str, ...]] = {
    "topk": ("topk_ids", "topk_raw", "logsumexp"),
    "sample": ("sample_ids", "sample_counts"),
}


# ------------------------------------------------------------------------------ id packing


def id_bits(vocab_size: int) -> int:
    """Bits per packed id: ``ceil(log2 V)``, at least 8 (so a row's id count is recoverable)."""
    return max(8, math.ceil(math.log2(max(vocab_size, 2))))


def packed_dtype(vocab_size: int) -> str:
    """The storage dtype name of packed ids for a vocabulary, e.g. ``'ids18'`` for 151,936."""
    return f"{PACKED_PREFIX}{id_bits(vocab_size)}"


def sparse_array_dtype(
    array: str, mode: LogitsMode, vocab_size: int, topk_layout: int, dtype: str
) -> str:
    """Storage dtype of a sparse mode's ``_ids``, ``_counts`` or ``_values`` array.

    Args:
        array: e.g. ``logits.topk_ids``; mode: the parsed mode; vocab_size: V;
        topk_layout: 1 or 2 (module docstring); dtype: the feature's value dtype.
    """
    if array.endswith(".topk_ids") and topk_layout == 2:
        return VARINT_IDS if mode.code else DELTA_IDS
    if array.endswith(".topk_values") and mode.code:
        return code_dtype(mode.code)
    if array.endswith("_ids"):
        return packed_dtype(vocab_size)
    if array.endswith("_counts"):
        return "uint8" if (mode.size or 0) < 256 else "uint16"
    return FP16_PLANES if topk_layout == 2 and dtype == "fp16" else dtype


def topk_layout_problems(topk_layout: int | None) -> list[str]:
    """What is wrong with a feature's ``topk_layout`` (None: not a top-k mode), as messages."""
    if topk_layout is None or topk_layout in TOPK_LAYOUTS:
        return []
    return [
        f"logits: unknown topk_layout {topk_layout!r}; choose one of {list(TOPK_LAYOUTS)} "
        "(a newer cachebrew wrote this cache?)"
    ]


def is_packed(dtype: str) -> bool:
    """Whether a storage dtype name is a packed-id one (``ids<bits>``)."""
    return dtype.startswith(PACKED_PREFIX) and dtype[len(PACKED_PREFIX) :].isdigit()


def pack_ids(ids: np.ndarray, bits: int) -> np.ndarray:
    """(rows, k) non-negative ints -> (rows, ceil(k * bits / 8)) uint8, big-endian bit order.

    Raises:
        CacheError: an id below 0 or at/above ``2**bits`` (names it and the width).
    """
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << bits):
        bad = int(ids.max()) if ids.max() >= 1 << bits else int(ids.min())
        raise CacheError(
            f"logit id {bad} does not fit the {bits}-bit ids of this cache (ids 0..{(1 << bits) - 1}"
            f", from its vocab_size); the teacher gives more logits than its vocabulary: pass "
            "the full logits width as vocab_size"
        )
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bit_matrix = ((ids.astype(np.uint32)[..., None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(ids.shape[0], -1), axis=1)


def check_vocab_ids(ids: np.ndarray, vocab_size: int) -> None:
    """Refuse ids at or above ``vocab_size`` (delta ids have no fixed width to overflow).

    Raises:
        CacheError: names the id, the vocabulary size and the fix.
    """
    if ids.size and int(ids.max()) >= vocab_size:
        raise CacheError(
            f"logit id {int(ids.max())} does not fit the vocabulary of this cache (ids 0.."
            f"{vocab_size - 1}, from its vocab_size); the teacher gives more logits than its "
            "vocabulary: pass the full logits width as vocab_size"
        )


def unpack_ids(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_ids`: (rows, nbytes) uint8 -> (rows, k) int64."""
    rows, nbytes = packed.shape
    k = nbytes * 8 // bits
    flat = np.unpackbits(np.ascontiguousarray(packed, dtype=np.uint8), axis=1, count=k * bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return flat.reshape(rows, k, bits).astype(np.int64) @ weights


def to_byte_planes(array: np.ndarray) -> np.ndarray:
    """(rows, k) fixed-width values -> (rows, itemsize * k) uint8, per row byte plane by plane
    (all low bytes, then the next ...; little-endian), so a codec sees runs of similar bytes."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    planes = array.view(np.uint8).reshape(*array.shape, array.itemsize)  # (rows, k, itemsize)
    return np.ascontiguousarray(planes.transpose(0, 2, 1)).reshape(array.shape[0], -1)


def from_byte_planes(stored: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`to_byte_planes`: (rows, itemsize * k) uint8 -> (rows, k) ``dtype``."""
    rows, size = stored.shape[0], np.dtype(dtype).itemsize
    planes = np.ascontiguousarray(stored, dtype=np.uint8).reshape(rows, size, -1)
    little = np.dtype(dtype).newbyteorder("<")
    return np.ascontiguousarray(planes.transpose(0, 2, 1)).view(little)[..., 0].astype(dtype)


def encode_delta_ids(ids: np.ndarray) -> np.ndarray:
    """(rows, k) ids ascending per row -> (rows, 4 * k) uint8: deltas in uint32 byte planes.

    Raises:
        CacheError: a row whose ids are not ascending or an id outside 0..2**32 - 1.
    """
    ids = np.asarray(ids, dtype=np.int64)
    deltas = np.diff(ids, axis=1, prepend=0)  # (rows, k)
    if deltas.size and (deltas.min() < 0 or ids.max() >= 1 << 32):
        raise CacheError("ids_delta: each row's ids must be ascending and in 0..2**32-1")
    return to_byte_planes(deltas.astype(np.uint32))


def decode_delta_ids(stored: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_delta_ids`: (rows, 4 * k) uint8 -> (rows, k) int64."""
    return np.cumsum(from_byte_planes(stored, np.dtype(np.uint32)).astype(np.int64), axis=1)


# ------------------------------------------------------------------------------ writing


def sparse_arrays(
    mode: LogitsMode,
    logits: np.ndarray,
    logsumexp: np.ndarray,
    values: np.ndarray,
    topk_layout: int = TOPK_LAYOUT,
) -> dict[str, np.ndarray]:
    """The stored arrays of one example's logits (before dtype encoding / id packing).

    Args:
        mode: ``topk`` or ``sample``.
        logits: (rows, V) raw float32 logits; logsumexp: (rows, 1) at T = 1.
        values: (rows, V) what ``topk_values`` keeps (raw or log-probs, the reduction).
        topk_layout: 1 keeps top-k entries by descending value, 2 by ascending id.

    Raises:
        ValueError: K or N larger than the vocabulary (topk).
    """
    assert mode.size is not None
    if mode.kind == "topk":
        k = mode.size
        if k > logits.shape[1]:
            raise ValueError(f"topk:{k} is larger than the {logits.shape[1]} logits")
        ids = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(logits, ids, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=1)  # (rows, k), largest first
        raw = np.take_along_axis(logits, ids, axis=1)
        kept = np.take_along_axis(values, ids, axis=1)
        return topk_arrays(mode, ids, raw, logsumexp, kept, topk_layout)
    return dict(zip(SAMPLE_ARRAYS, sample_rows(logits, mode.size, mode.temperature), strict=True))


def topk_arrays(
    mode: LogitsMode,
    ids: np.ndarray,
    raw: np.ndarray,
    logsumexp: np.ndarray,
    kept: np.ndarray,
    topk_layout: int = TOPK_LAYOUT,
) -> dict[str, np.ndarray]:
    """The stored top-k arrays from a row's top-k, largest first (the entries are reordered
    by the layout here).

    Args:
        mode: ``topk:K[:CODE]``; ids: (rows, K) int; raw: (rows, K) raw logits at ``ids``;
        logsumexp: (rows, 1) at T = 1; kept: (rows, K) what ``topk_values`` keeps (raw or
        ``raw - logsumexp``, the reduction); topk_layout: 1 or 2 (module docstring).
    """
    if topk_layout == 2 or mode.code:
        order = np.argsort(ids, axis=1, kind="stable")  # (rows, k), ascending ids
        ids, raw, kept = (np.take_along_axis(a, order, axis=1) for a in (ids, raw, kept))
    if mode.code:  # log-probs, whatever the reduction
        kept = encode_values(raw - logsumexp, mode.code)
    return {
        "logits.topk_values": kept,
        "logits.topk_ids": ids.astype(np.int64),
        "logits.logsumexp": logsumexp,
    }


def sample_rows(logits: np.ndarray, n: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """N draws per row from ``softmax(logits / T)``: distinct ids and counts, (rows, N) each."""
    rows = logits.shape[0]
    ids = np.zeros((rows, n), dtype=np.int64)
    counts = np.zeros((rows, n), dtype=np.int64)
    for r in range(rows):
        row = logits[r].astype(np.float64) / temperature
        cdf = np.cumsum(np.exp(row - row.max()))
        rng = np.random.default_rng(zlib.crc32(logits[r].tobytes()))
        draws = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        drawn, drawn_counts = np.unique(np.minimum(draws, len(cdf) - 1), return_counts=True)
        order = np.lexsort((drawn, -drawn_counts))
        ids[r, : len(drawn)], counts[r, : len(drawn)] = drawn[order], drawn_counts[order]
    return ids, counts


# ------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class SparseLogits:
    """A batch of sparse teacher rows: what the sparse KD losses read instead of (rows, V).

    Attributes:
        kind: ``"topk"`` or ``"sample"``.
        ids: (rows, k) int64 vocabulary ids.
        logprobs: ``topk``: (rows, k) teacher log-probabilities at T = 1 (exact), sorted
            descending. ``sample``: log of the sampled share ``counts / N`` (-inf on empty slots).
        num_classes: V.
        temperature: ``sample``: the temperature the ids were drawn at (1.0 for topk).
    """

    kind: str
    ids: Any
    logprobs: Any
    num_classes: int
    temperature: float = 1.0

    def to(self, device: Any) -> SparseLogits:
        """The same rows on ``device`` (the loop's ``move_to_device`` calls this)."""
        return SparseLogits(
            self.kind, self.ids.to(device), self.logprobs.to(device), self.num_classes,
            self.temperature,
        )  # fmt: skip

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, V)``: the shape of the dense rows this stands for."""
        return (int(self.ids.shape[0]), self.num_classes)


def read_sparse_logits(
    arrays: dict[str, Any], mode: LogitsMode, num_classes: int, reduction: str
) -> SparseLogits:
    """A :class:`SparseLogits` from a batch's decoded arrays (torch tensors, rows concatenated).

    ``topk`` values become log-probs (``v - logsumexp`` for raw values), sorted descending
    (a stable sort: layout 1 rows come out unchanged, layout 2 rows in the same order up to
    ties; a value code's rows decode to log-probs that keep the stored top-k mass); ``sample`` counts become ``log(counts / N)``.
    """
    if mode.kind == "topk":
        values = arrays["logits.topk_values"]
        if mode.code:
            values = decode_values(values, mode.code)
        elif reduction == "raw":
            values = values - arrays["logits.logsumexp"]
        values, order = values.sort(dim=1, descending=True, stable=True)
        ids = arrays["logits.topk_ids"].long().gather(1, order)
        return SparseLogits("topk", ids, values, num_classes)
    counts = arrays["logits.sample_counts"].float()
    share = (counts / counts.sum(1, keepdim=True)).log()  # empty slots: -inf
    return SparseLogits(
        "sample", arrays["logits.sample_ids"].long(), share, num_classes, mode.temperature
    )
