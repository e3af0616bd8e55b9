"""A cache reader written from docs/format.md alone: json, numpy, zarr and pyarrow, no cachebrew.

It is what a reader in another language would do, kept in Python so a test can compare it with
cachebrew's own reader (tests/unit/cache/format/test_format_doc.py). Section numbers refer to
docs/format.md. Nothing here may import cachebrew (the test checks the imports).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.ipc as ipc
import zarr


def read_cache(root: str | Path) -> dict[str, Any]:
    """Every example of a cache: ``{example_id: {"label", "input_ids", "length", "arrays"}}``.

    ``arrays`` maps each stored data array to its rows decoded to float64 values or int64 ids
    (§4), except ``topk_q<B>`` values, decoded to log-probabilities (§5.3).
    """
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())  # §2
    if manifest["format_version"] != 1:
        raise ValueError(f"format version {manifest['format_version']} is not 1")
    examples: dict[str, Any] = {}
    for shard in manifest["shards"]:
        examples.update(read_shard(root / shard["path"]))
    return examples


def read_shard(path: Path) -> dict[str, Any]:
    """One shard (§3): the index table, then every data array, checked and decoded."""
    table = ipc.open_file(str(path / "index.arrow")).read_all()
    meta = json.loads(table.schema.metadata[b"cachebrew"])
    group = zarr.open_group(str(path), mode="r")
    decoded = {}
    for name, array_meta in meta["arrays"].items():
        if name.endswith(".scale"):
            continue
        stored = _checked(group[name][...], array_meta)
        scale = None
        if array_meta["dtype"] == "int8":
            scale = _checked(group[f"{name}.scale"][...], meta["arrays"][f"{name}.scale"])
        decoded[name] = decode_array(stored, array_meta["dtype"], scale)
    columns = table.to_pydict()
    out = {}
    for row, example_id in enumerate(columns["example_id"]):
        arrays = {}
        for name, values in decoded.items():
            start = columns[f"{name}.offset"][row]
            arrays[name] = values[start : start + columns[f"{name}.length"][row]]
        out[example_id] = {
            "label": columns["label"][row],
            "input_ids": np.asarray(columns["input_ids"][row], dtype=np.int64),
            "length": columns["length"][row],
            "arrays": arrays,
        }
    return out


def _checked(stored: np.ndarray, array_meta: dict[str, Any]) -> np.ndarray:
    """§3.2: crc32 of each row chunk's decoded, C-ordered bytes, in chunk order."""
    rows = array_meta["chunk_rows"]
    for i, expected in enumerate(array_meta["checksums"]):
        chunk = np.ascontiguousarray(stored[i * rows : (i + 1) * rows])
        if f"{zlib.crc32(chunk.tobytes()):08x}" != expected:
            raise ValueError(f"chunk {i} fails its crc32")
    return stored


def decode_array(stored: np.ndarray, dtype: str, scale: np.ndarray | None) -> np.ndarray:
    """§4: a stored (rows, width) array by its storage dtype name."""
    if dtype == "fp32" or dtype == "fp16":
        return stored.astype(np.float64)
    if dtype == "bf16":  # §4.1: the upper 16 bits of a float32
        return (stored.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype == "int8":  # §4.2
        return stored.astype(np.float64) * scale
    if dtype == "fp16_planes":  # §5.1
        return _from_planes(stored, np.dtype("<f2")).astype(np.float64)
    if dtype == "ids_delta":  # §5.1
        return np.cumsum(_from_planes(stored, np.dtype("<u4")).astype(np.int64), axis=1)
    if dtype == "ids_varint":  # §5.3
        return _varint_ids(stored)
    if dtype.startswith("ids") and dtype[3:].isdigit():  # §5.2
        return _unpack_bits(stored, int(dtype[3:]))
    if dtype.startswith("topk_q"):  # §5.3
        return _coded_logprobs(stored, int(dtype[len("topk_q") :]))
    return stored.astype(np.int64)  # plain integer arrays: uint8, uint16, int32 ...


def _from_planes(stored: np.ndarray, dtype: np.dtype) -> np.ndarray:
    rows, size = stored.shape[0], dtype.itemsize
    planes = stored.reshape(rows, size, -1).transpose(0, 2, 1)  # (rows, k, itemsize)
    return np.ascontiguousarray(planes).view(dtype)[..., 0]


def _unpack_bits(stored: np.ndarray, bits: int) -> np.ndarray:
    rows, nbytes = stored.shape
    k = nbytes * 8 // bits
    flat = np.unpackbits(stored, axis=1, count=k * bits).reshape(rows, k, bits)
    return flat.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)


def _varint_ids(stored: np.ndarray) -> np.ndarray:
    rows, width = stored.shape
    k = width // 3
    ids = np.zeros((rows, k), dtype=np.int64)
    for r in range(rows):
        values, value, shift, previous = [], 0, 0, 0
        for byte in stored[r]:
            value |= (int(byte) & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                previous += value
                values.append(previous)
                value, shift = 0, 0
                if len(values) == k:
                    break
        ids[r] = values
    return ids


def _coded_logprobs(stored: np.ndarray, bits: int) -> np.ndarray:
    levels = (1 << bits) - 1
    depth = stored[:, :1].astype(np.float64) / 8.0
    d = stored[:, 1:3].copy().view("<f2").astype(np.float64)  # (rows, 1)
    floor = np.exp(-0.25 * depth)
    g = floor + stored[:, 3:].astype(np.float64) * ((1 - floor) / levels)
    rel = np.log(np.maximum(g, 1e-300)) / 0.25
    peak = rel.max(axis=1, keepdims=True)
    lse = peak + np.log(np.exp(rel - peak).sum(axis=1, keepdims=True))
    return rel - lse - d


def read_lm_head(root: str | Path) -> dict[str, np.ndarray]:
    """§6: the exact cache's LM head from ``lm_head.safetensors`` (header JSON + raw bytes)."""
    payload = (Path(root) / "lm_head.safetensors").read_bytes()
    size = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + size])
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, stop = entry["data_offsets"]
        raw = payload[8 + size + start : 8 + size + stop]
        if entry["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            values = bits.view(np.float32)
        else:
            values = np.frombuffer(raw, dtype=dtypes[entry["dtype"]])
        out[name] = values.reshape(entry["shape"]).astype(np.float64)
    return out
