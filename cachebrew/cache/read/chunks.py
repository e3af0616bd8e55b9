"""Decode a shard array's chunk files straight through numcodecs, bypassing zarr's async layer.

A cachebrew array is always a regular ``(chunk_rows, width)`` grid with the default chunk key
encoding, a little-endian ``bytes`` codec (no endianness for int8) and at most one compressor
(``zstd``, ``blosc``, or none): :func:`chunk_decoder` reads that from the array's ``zarr.json`` and returns None for
anything else, so the caller falls back to zarr. Going through zarr cost ~0.15-0.2 of the
codec's own speed (docs/benchmarks-history.md, "Reader against its codec"): an event-loop hop, a task and
several buffer copies per chunk. Here a local chunk costs one decode from the memory-mapped
file (the page cache itself: reading it into a buffer first cost ~25 % of the decode,
docs/benchmarks-history.md "third pass") into the caller's preallocated output; for ``none`` the file is
read straight into the output. Published chunk files are never truncated in place (a shard is
built in ``_staging`` and renamed in; a rewrite makes new files), which a mapped read relies
on: a file truncated by another program while it is decoded would end the process (SIGBUS).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from cachebrew.cache.format.storage import CacheLocation

# The bytes codec as zarr writes it: one-byte dtypes (int8) carry no endianness.
_LITTLE_ENDIAN_BYTES = (
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "bytes"},
)

# (device, inode, size, mtime in ns) of a chunk file: a rewritten file gets a new one.
FileSignature = tuple[int, int, int, int]


@dataclass(frozen=True)
class ChunkDecoder:
    """How to turn one chunk file of an array into ``chunk_rows * width`` stored values.

    Attributes:
        folder: the array's directory (chunk ``i`` is ``folder/c/i/0``).
        codec: a numcodecs codec, or None for uncompressed chunks.
        chunk_nbytes: decoded bytes of one (full) chunk.
    """

    folder: str
    codec: Any
    chunk_nbytes: int

    def chunk_path(self, chunk: int) -> str:
        """The file of row chunk ``chunk``."""
        return f"{self.folder}/c/{chunk}/0"


def chunk_decoder(loc: CacheLocation, folder: str, dtype: np.dtype) -> ChunkDecoder | None:
    """The decoder of the array at ``folder``, or None when its layout is not the one
    cachebrew writes (then read it through zarr)."""
    meta = loc.read_json(f"{folder}/zarr.json") or {}
    grid = meta.get("chunk_grid", {})
    keys = meta.get("chunk_key_encoding", {})
    codecs = meta.get("codecs", [])
    if (
        grid.get("name") != "regular"
        or keys != {"name": "default", "configuration": {"separator": "/"}}
        or not codecs
        or codecs[0] not in _LITTLE_ENDIAN_BYTES
        or len(codecs) > 2
        or meta.get("fill_value") not in (0, 0.0)
    ):
        return None
    codec = _numcodecs_codec(codecs[1]) if len(codecs) == 2 else None
    if len(codecs) == 2 and codec is None:
        return None
    rows, width = grid["configuration"]["chunk_shape"]
    return ChunkDecoder(folder, codec, int(rows) * int(width) * dtype.itemsize)


def _numcodecs_codec(config: dict[str, Any]) -> Any:
    import numcodecs

    if config.get("name") == "zstd":
        return numcodecs.Zstd(level=int(config["configuration"].get("level", 0)))
    if config.get("name") == "blosc":
        return numcodecs.Blosc()  # cname, shuffle and typesize are read from each frame header
    return None


def decode_chunk(
    loc: CacheLocation, decoder: ChunkDecoder, chunk: int, out: np.ndarray
) -> FileSignature | None:
    """Decode chunk ``chunk`` into ``out`` (C-contiguous, ``decoder.chunk_nbytes`` bytes).

    A chunk file that does not exist holds only the fill value 0 (zarr skips writing those).

    Returns:
        The :data:`FileSignature` of a local chunk file as it was read (from ``fstat`` of the
        open file, so it describes the bytes decoded); None for a missing or remote file.

    Raises:
        Exception: whatever the codec raises on bad bytes (the caller names the chunk).
    """
    target = out.reshape(-1).view(np.uint8)
    path = decoder.chunk_path(chunk)
    signature: FileSignature | None = None
    try:
        if loc.is_local:
            with open(path, "rb", buffering=0) as f:
                stat = os.fstat(f.fileno())
                signature = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if decoder.codec is None:
                    _read_exact(f, target, path)
                elif stat.st_size == 0:
                    decoder.codec.decode(b"", out=target)
                else:  # the codec reads the page cache in place: no copy of the file
                    with mmap.mmap(f.fileno(), stat.st_size, access=mmap.ACCESS_READ) as mapped:
                        decoder.codec.decode(mapped, out=target)
                return signature
        payload = loc.read_bytes(path)
    except FileNotFoundError:
        target[:] = 0
        return None
    if decoder.codec is None:
        if len(payload) != len(target):
            raise ValueError(f"{path}: {len(payload)} bytes, expected {len(target)}")
        target[:] = np.frombuffer(payload, dtype=np.uint8)
        return signature
    decoder.codec.decode(payload, out=target)
    return signature


def _read_exact(f: Any, target: np.ndarray, path: str) -> None:
    n = f.readinto(target.data)
    if n != len(target) or f.read(1):
        raise ValueError(f"{path}: not {len(target)} bytes of an uncompressed chunk")
