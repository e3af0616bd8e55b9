"""Storage dtypes (fp32 / fp16 / bf16-as-uint16 / int8 + per-row scale), Zarr codecs, checksums.

Measured on this machine (16 MB fp16 buffer): zlib ``crc32`` hashes at ~3.6 GB/s, blake2b at
~0.8 GB/s and zstd-1 encodes at ~0.6 GB/s, so a crc32 per chunk costs ~15 % of the encode while
blake2b would cost ~70 %. Chunk checksums are crc32 (accidental corruption, not tampering); the
small per-shard ``index.arrow`` gets a sha256 in the manifest.
"""

from __future__ import annotations

import hashlib
import sys
import zlib
from typing import Any

import numpy as np

from cachebrew.cache.logits.sparse import (
    DELTA_IDS,
    FP16_PLANES,
    PACKED_PREFIX,
    decode_delta_ids,
    encode_delta_ids,
    from_byte_planes,
    is_packed,
    pack_ids,
    to_byte_planes,
    unpack_ids,
)
from cachebrew.cache.logits.topk_codes import (
    VARINT_IDS,
    decode_varint_ids,
    encode_varint_ids,
    is_coded,
)
from cachebrew.errors import CacheError

# Arrays at least this large are cast with torch when torch is loaded (below, call overhead wins).
_TORCH_MIN_SIZE = 1 << 16
# Largest finite float16.
FP16_MAX = 65504.0
INT8_LEVELS = 127.0

STORED_NUMPY_DTYPE: dict[str, str] = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "uint16",
    "int8": "int8",
}

CHUNK_CHECKSUM = "crc32"
INDEX_CHECKSUM = "sha256"

# The default codec, chosen by measurement on real fp16 teacher caches (docs/decisions.md,
# "Codec choice"): Blosc lz4 with bit-shuffle stores MiniLM hidden states and attention as
# small as zstd-1 (1.17x / 1.14x vs 1.16x / 1.11x) and decodes 2.8x faster on one thread.
DEFAULT_CODEC = "lz4-bitshuffle"

# What each codec name means; recorded in the manifest.
CODEC_CONFIGS: dict[str, dict[str, Any]] = {
    "lz4-bitshuffle": {
        "name": "blosc",
        "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
    },
    "zstd": {"name": "zstd", "configuration": {"level": 1, "checksum": False}},
    "lz4": {
        "name": "blosc",
        "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"},
    },
    "blosc-zstd": {
        "name": "blosc",
        "configuration": {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"},
    },
    "none": {"name": "none", "configuration": {}},
}


def zarr_compressors(codec: str) -> tuple[Any, ...]:
    """Zarr v3 bytes->bytes codecs for a codec name (zarr built-ins only, stable across 3.x)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    config = CODEC_CONFIGS[codec]["configuration"]
    if codec == "zstd":
        return (ZstdCodec(**config),)
    if codec in ("lz4", "blosc-zstd", "lz4-bitshuffle"):
        return (BloscCodec(**config),)
    return ()


def stored_dtype(dtype: str) -> np.dtype:
    """Numpy dtype of the stored array for a storage dtype or plain numpy dtype name."""
    if is_packed(dtype) or is_coded(dtype) or dtype in (DELTA_IDS, FP16_PLANES):
        # ids and value codes as bytes (cache/logits/sparse.py, cache/logits/topk_codes.py)
        return np.dtype(np.uint8)
    return np.dtype(STORED_NUMPY_DTYPE.get(dtype, dtype))


def encode(array: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode a float array for storage.

    Args:
        array: (rows, width) float32 (other float dtypes are cast).
        dtype: ``'fp32'``, ``'fp16'``, ``'bf16'`` or ``'int8'``; integer numpy dtype names
            (``'int32'``, ``'uint16'``) pass ids through unchanged; ``'ids<b>'`` bit-packs
            ids at b bits each (:func:`~cachebrew.cache.logits.sparse.pack_ids`);
            ``'ids_delta'`` stores ascending ids as delta byte planes
            (:func:`~cachebrew.cache.logits.sparse.encode_delta_ids`); ``'fp16_planes'`` is
            fp16 stored as byte planes (:func:`~cachebrew.cache.logits.sparse.to_byte_planes`);
            ``'ids_varint'`` stores ascending ids as varint deltas and ``'topk_q<B>'`` passes
            coded top-k values through (:mod:`cachebrew.cache.logits.topk_codes`).

    Returns:
        ``(stored, scale)``: ``stored`` (rows, width) in :func:`stored_dtype`, ``scale``
        (rows, 1) float32 for int8 (per-row absmax / 127), else None.

    Raises:
        CacheError: non-finite values, or |x| above the fp16 range (use bf16 or int8).
    """
    if dtype == DELTA_IDS:
        return encode_delta_ids(array), None
    if dtype == VARINT_IDS:
        return encode_varint_ids(array), None
    if is_coded(dtype):  # coded when the example was prepared (they need the logsumexp)
        return np.ascontiguousarray(array, dtype=np.uint8), None
    if dtype == FP16_PLANES:
        return to_byte_planes(encode(array, "fp16")[0]), None
    if is_packed(dtype):
        return pack_ids(array, int(dtype[len(PACKED_PREFIX) :])), None
    if dtype not in STORED_NUMPY_DTYPE:
        return np.ascontiguousarray(array, dtype=stored_dtype(dtype)), None
    x = np.ascontiguousarray(array, dtype=np.float32)
    torch = sys.modules.get("torch")
    if torch is not None and x.size >= _TORCH_MIN_SIZE and dtype in ("fp16", "bf16"):
        return _encode_torch(torch, x, dtype), None
    absmax = float(np.max(np.abs(x))) if x.size else 0.0
    if not np.isfinite(absmax):
        raise CacheError("cannot store non-finite values (NaN or inf) in a teacher feature")
    if dtype == "fp32":
        return x, None
    if dtype == "fp16":
        if absmax > FP16_MAX:
            raise CacheError(
                f"value {absmax:.4g} exceeds the fp16 range ({FP16_MAX}); store with bf16 or int8"
            )
        return x.astype(np.float16), None
    if dtype == "bf16":
        return _fp32_to_bf16_bits(x), None
    return _quantize_int8(x)


def _encode_torch(torch: Any, x: np.ndarray, dtype: str) -> np.ndarray:
    """:func:`encode` to fp16/bf16 in torch: bit-identical (both round to nearest even) and
    several times faster than numpy's casts on large arrays, which precompute's writer needs to
    keep up with the teacher."""
    tensor = torch.from_numpy(x)
    low, high = torch.aminmax(tensor)
    absmax = max(-float(low), float(high))
    if not np.isfinite(absmax):
        raise CacheError("cannot store non-finite values (NaN or inf) in a teacher feature")
    if dtype == "bf16":
        return tensor.bfloat16().view(torch.int16).numpy().view(np.uint16)  # type: ignore[no-any-return]
    if absmax > FP16_MAX:
        raise CacheError(
            f"value {absmax:.4g} exceeds the fp16 range ({FP16_MAX}); store with bf16 or int8"
        )
    return tensor.half().numpy()  # type: ignore[no-any-return]


def decode(stored: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Inverse of :func:`encode`: stored (rows, width) -> float32 (rows, width).

    Integer id dtypes decode to int64 (ready for ``torch.gather``). When torch is already
    imported (as in ``distill``) large casts run in torch, which is bit-identical and measured
    ~1.7x faster end to end than numpy's fp16 cast on this CPU; torch is never imported here.
    """
    if dtype == DELTA_IDS:
        return decode_delta_ids(stored)
    if dtype == VARINT_IDS:
        return decode_varint_ids(stored)
    if is_coded(dtype):  # decoded with the batch (read_sparse_logits)
        return np.ascontiguousarray(stored, dtype=np.uint8)
    if dtype == FP16_PLANES:
        return decode(from_byte_planes(stored, np.dtype(np.float16)), None, "fp16")
    if is_packed(dtype):
        return unpack_ids(stored, int(dtype[len(PACKED_PREFIX) :]))
    torch = sys.modules.get("torch")
    if torch is not None and stored.size >= _TORCH_MIN_SIZE and dtype in ("fp16", "bf16", "int8"):
        return _decode_torch(torch, stored, scale, dtype)
    if dtype == "fp32":
        return np.ascontiguousarray(stored, dtype=np.float32)
    if dtype == "fp16":
        return stored.astype(np.float32)
    if dtype == "bf16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    if dtype == "int8":
        if scale is None:
            raise CacheError("int8 array without its .scale companion")
        return stored.astype(np.float32) * scale
    return stored.astype(np.int64)


def _decode_torch(
    torch: Any, stored: np.ndarray, scale: np.ndarray | None, dtype: str
) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(stored))
    scales = torch.from_numpy(np.ascontiguousarray(scale)) if scale is not None else None
    return decode_tensor(tensor, dtype, scales).numpy()  # type: ignore[no-any-return]


def torch_values(stored: Any, dtype: str) -> Any:
    """A view of stored values that torch casts to their float32 values exactly.

    The one reading of a storage dtype as torch values (:func:`decode_tensor`, and the padding
    copies of :mod:`cachebrew.cache.feed`): bf16 bits stored as 16-bit integers are viewed as
    ``torch.bfloat16``; every other tensor (fp32, fp16, int8 before its scale) is returned.

    Args:
        stored: a torch tensor in the stored dtype (:func:`stored_dtype`).
        dtype: the storage dtype name.
    """
    torch = sys.modules["torch"]  # a tensor was passed: torch is loaded
    if dtype == "bf16" and stored.dtype in (torch.int16, torch.uint16):
        return stored.view(torch.int16).view(torch.bfloat16)
    return stored


def decode_tensor(stored: Any, dtype: str, scale: Any = None) -> Any:
    """Stored values -> a new float32 tensor on their device (:func:`decode` for tensors).

    Args:
        stored: (rows, width) torch tensor in the stored dtype (any shape without ``scale``).
        dtype: the storage dtype name.
        scale: int8 only: the (rows, 1) float32 per-row scales.

    Raises:
        CacheError: int8 values without their scales.
    """
    torch = sys.modules["torch"]
    values = torch_values(stored, dtype).to(torch.float32, copy=True)
    if dtype == "int8":
        if scale is None:
            raise CacheError("int8 array without its .scale companion")
        values.mul_(scale)
    return values


def _fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    # Round to nearest even on the upper 16 bits; inputs are finite (checked by encode).
    bits = x.view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def _quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.max(np.abs(x), axis=1, keepdims=True) / np.float32(INT8_LEVELS)  # (rows, 1)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    quantized = np.clip(np.rint(x / safe), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return quantized, scale.astype(np.float32)


def chunk_checksum(data: np.ndarray) -> str:
    """crc32 of a C-contiguous array's bytes, as 8 hex digits."""
    contiguous = np.ascontiguousarray(data)
    return f"{zlib.crc32(contiguous.data.cast('B')):08x}"


def chunk_checksums(data: np.ndarray, chunk_rows: int) -> list[str]:
    """:func:`chunk_checksum` of every row chunk of a (rows, width) array."""
    return [chunk_checksum(data[s : s + chunk_rows]) for s in range(0, len(data), chunk_rows)]


def bytes_checksum(data: bytes) -> str:
    """sha256 hex of a small file's bytes (``index.arrow``)."""
    return hashlib.sha256(data).hexdigest()
