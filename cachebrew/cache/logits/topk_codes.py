"""Lossy value codes of ``--logits topk:K:qB`` and varint ids: top-128 at <= 150 B/token.

Opt-in (the default ``topk:K`` stays lossless). A code ``qB`` (B = 4, 5 or 8 bits, 2**B levels)
stores each row's top-k **log-probabilities** in id order (layout 2) as one byte per entry:

- ``l_i = log q_i - max_j log q_j <= 0`` (relative to the row's top entry); the row's depth
  ``D = -min_i l_i``, rounded *up* to 1/8 nat, is stored as a byte (``D <= 31.875``: deeper
  entries are clipped to the bottom level, ``q_i / q_max < 1.4e-14``).
- levels are uniform in ``g = exp(l / 4) = (q_i / q_max) ** (1/4)`` between ``exp(-D / 4)``
  and 1: finer near the top, coarser in the tail, where KL weighs an entry's error by its
  probability (measured against uniform log-steps, sqrt and fixed steps:
  docs/benchmarks-history.md, "Large-vocabulary logit storage"). Code ``c`` in ``0 .. 2**B - 1`` decodes to
  ``r = 4 log(g_D + c (1 - g_D) / (2**B - 1))``.
- ``d = -log(sum of the k probabilities)`` (fp16, >= 0) is stored exactly enough that the
  reconstruction **keeps the row's top-k mass**: ``log q_hat = r - logsumexp(r) - d``, so the
  tail bucket ``1 - sum q_hat = 1 - exp(-d)`` is the teacher's tail (relative error <= 5e-4,
  fp16's), and the losses' tail bucket stays consistent after quantisation.

Stored row (dtype ``topk_q<B>``, uint8): ``[D byte, d as fp16 (2 bytes, little-endian),
k code bytes]``. The codec's entropy stage (zstd) prices the codes below B bits each.
The ``logits.logsumexp`` array is kept unchanged (exact raw log-sum-exp).

Ids of a coded mode (dtype ``ids_varint``): the ascending ids' deltas (the first from 0) as
LEB128 varints (7 bits a byte, high bit = more bytes follow), each row padded with zeros to
``3 k`` bytes (V < 2**21); a row holds exactly k varints, so zero padding is unambiguous.
Measured 84.8 B against 86.7 B for the uint32 delta byte planes at k = 128 on V = 151,936
(zstd-1; the zero padding costs most of the gain: unpadded varints take 81 B).

Fidelity (docs/benchmarks-history.md, "Large-vocabulary logit storage"): at k = 128, V = 151,936 the codes
store 142 / 153 / 194 B/token in all (q4 / q5 / q8, ids and logsumexp included) with
KL(teacher || reconstructed) over the k + tail buckets of 5.6e-3 / 1.3e-3 / 1.9e-5 nats mean
on synthetic Zipf rows. Documented bounds, tested on LM-shaped rows (tests/unit/
test_topk_codes.py): mean KL below 1e-2 (q4), 3e-3 (q5), 1e-4 (q8).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cachebrew.errors import CacheError

CODE_BITS: dict[str, int] = {"q4": 4, "q5": 5, "q8": 8}
CODE_PREFIX = "topk_"  # value dtype name: topk_q4 ...
VARINT_IDS = "ids_varint"
GAMMA = 0.25  # companding exponent: levels uniform in (q / q_max) ** GAMMA
DEPTH_STEP = 8.0  # the depth byte counts 1/8 nats
HEADER = 3  # depth byte + fp16 d
VARINT_MAX_BYTES = 3  # ids < 2**21


def code_problems(code: str) -> list[str]:
    """What is wrong with a value code name (empty: a known code)."""
    if code in CODE_BITS:
        return []
    return [f"unknown top-k value code {code!r}; choose one of {sorted(CODE_BITS)}"]


def code_dtype(code: str) -> str:
    """The storage dtype name of a code's values array, e.g. ``topk_q4``."""
    return CODE_PREFIX + code


def is_coded(dtype: str) -> bool:
    """Whether a storage dtype is a coded-values (uint8) or varint-ids one."""
    return dtype == VARINT_IDS or (
        dtype.startswith(CODE_PREFIX) and dtype[len(CODE_PREFIX) :] in CODE_BITS
    )


def encode_values(logp: np.ndarray, code: str) -> np.ndarray:
    """(rows, k) top-k log-probabilities at T = 1, any order -> (rows, 3 + k) uint8 (module doc)."""
    levels = (1 << CODE_BITS[code]) - 1
    logp = np.asarray(logp, dtype=np.float64)
    top = logp.max(axis=1, keepdims=True)
    rel = logp - top  # (rows, k), <= 0
    depth = np.clip(np.ceil(-rel.min(axis=1, keepdims=True) * DEPTH_STEP), 0, 255)  # (rows, 1)
    floor = np.exp(-GAMMA * depth / DEPTH_STEP)
    span = np.where(floor < 1, 1 - floor, 1.0)
    codes = np.rint((np.exp(GAMMA * rel) - floor) / span * levels)
    mass = top[:, 0] + np.log(np.exp(rel).sum(axis=1))  # log sum_k q
    d = np.clip(-mass, 0, None).astype("<f2")  # (rows,)
    header = np.concatenate([depth.astype(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    return np.concatenate([header, np.clip(codes, 0, levels).astype(np.uint8)], axis=1)


def decode_values(stored: Any, code: str) -> Any:
    """Inverse of :func:`encode_values`: (rows, 3 + k) uint8 tensor -> (rows, k) float32
    log-probabilities whose top-k mass is the stored one (module docstring)."""
    import torch

    stored = stored.to(torch.int32)
    levels = (1 << CODE_BITS[code]) - 1
    depth = stored[:, :1].double() / DEPTH_STEP  # (rows, 1)
    half = (stored[:, 1] | (stored[:, 2] << 8)).to(torch.int16).view(torch.float16)
    floor = torch.exp(-GAMMA * depth)
    g = floor + stored[:, HEADER:].double() * ((1 - floor) / levels)  # (rows, k)
    rel = torch.log(g.clamp_min(1e-300)) / GAMMA
    logq = rel - torch.logsumexp(rel, dim=1, keepdim=True) - half.double()[:, None]
    return logq.float()


def decode_coded(stored: np.ndarray, code: str) -> np.ndarray:
    """:func:`decode_values` for numpy: (rows, 3 + k) uint8 -> (rows, k) float64 log-probs."""
    import torch

    return decode_values(torch.from_numpy(np.asarray(stored)), code).double().numpy()  # type: ignore[no-any-return]


def encode_varint_ids(ids: np.ndarray) -> np.ndarray:
    """(rows, k) ids ascending per row -> (rows, 3 k) uint8 LEB128 deltas, zero padded.

    Raises:
        CacheError: a row whose ids are not ascending or an id at or above 2**21.
    """
    ids = np.asarray(ids, dtype=np.int64)
    rows, k = ids.shape
    deltas = np.diff(ids, axis=1, prepend=0)  # (rows, k)
    if deltas.size and (deltas.min() < 0 or ids.max() >= 1 << (7 * VARINT_MAX_BYTES)):
        raise CacheError("ids_varint: each row's ids must be ascending and below 2**21")
    sizes = 1 + (deltas >= 1 << 7) + (deltas >= 1 << 14)  # (rows, k) bytes per delta
    ends = np.cumsum(sizes, axis=1)  # (rows, k) end offset of each varint in its row
    out = np.zeros((rows, VARINT_MAX_BYTES * k), dtype=np.uint8)
    row_of = np.broadcast_to(np.arange(rows)[:, None], (rows, k))
    for byte in range(VARINT_MAX_BYTES):
        used = sizes > byte
        more = (sizes > byte + 1).astype(np.int64) << 7
        value = ((deltas >> (7 * byte)) & 0x7F) | more
        position = ends - sizes + byte
        out[row_of[used], position[used]] = value[used]
    return out


def decode_varint_ids(stored: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_varint_ids`: (rows, 3 k) uint8 -> (rows, k) int64."""
    stored = np.ascontiguousarray(stored, dtype=np.uint8)
    rows, width = stored.shape
    k = width // VARINT_MAX_BYTES
    low = (stored & 0x7F).astype(np.int32)  # (rows, width)
    more = stored >= 0x80  # another byte of the same varint follows
    after = np.zeros_like(low)
    after[:, :-1] = low[:, 1:] << 7
    more_after = np.zeros_like(more)
    more_after[:, :-1] = more[:, 1:]
    third = np.zeros_like(low)
    third[:, :-2] = low[:, 2:] << 14
    value = low + np.where(more, after + np.where(more_after, third, 0), 0)  # if it starts here
    start = np.ones_like(more)
    start[:, 1:] = ~more[:, :-1]  # padding bytes start (zero) varints too, after the k real ones
    first = start & (np.cumsum(start, axis=1, dtype=np.int32) <= k)
    return np.cumsum(value[first].reshape(rows, k), axis=1, dtype=np.int64)
