"""Read one published shard: its index (read and parsed once) and chunk-verified row reads."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from cachebrew.cache.format.codecs import bytes_checksum, chunk_checksum, decode, stored_dtype
from cachebrew.cache.format.index import label_from_arrow, overlapping_ids, parse_index
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.format.storage import INDEX, CacheLocation
from cachebrew.cache.read.buffers import BufferPool
from cachebrew.cache.read.chunks import ChunkDecoder, FileSignature, chunk_decoder, decode_chunk
from cachebrew.errors import CacheCorruptError, CacheError

FUSED_PIPELINE = "zarr.core.codec_pipeline.FusedCodecPipeline"


def _pipeline_config() -> Any:
    """A zarr config context that selects FusedCodecPipeline when this zarr has it (>= 3.4)."""
    import zarr
    import zarr.core.codec_pipeline as pipelines

    if hasattr(pipelines, "FusedCodecPipeline"):
        return zarr.config.set({"codec_pipeline.path": FUSED_PIPELINE})
    return contextlib.nullcontext()


class ShardReader:
    """One shard of an open cache.

    Args:
        loc: the cache location.
        entry: the shard's manifest entry (``index``, ``path``, ``index_sha256`` ...).
        spec: the cache's feature spec.
        verify: check each chunk's crc32 the first time it is read, and again whenever its
            file has changed since (see :meth:`read_rows`).

    Raises:
        CacheError: the shard is missing.
        CacheCorruptError: ``index.arrow`` does not match the manifest's sha256.
    """

    def __init__(self, loc: CacheLocation, entry: dict[str, Any], spec: FeatureSpec, verify: bool):
        self.index = int(entry["index"])
        self.path = loc.join(entry["path"])
        self.spec, self.verify, self._loc = spec, verify, loc
        raw = self._read_index_bytes()
        if bytes_checksum(raw) != entry["index_sha256"]:
            raise CacheCorruptError(
                f"shard {self.index}: {self.path}/{INDEX} does not match the sha256 in the manifest"
                f"; {_REPAIR.format(shard=self.index)}"
            )
        self.table, self.meta = parse_index(raw, f"{self.path}/{INDEX}")
        self.example_ids: list[str] = self.table.column("example_id").to_pylist()
        self.rows: dict[str, tuple[np.ndarray, np.ndarray]] = {
            name: (
                self.table.column(f"{name}.offset").to_numpy(),
                self.table.column(f"{name}.length").to_numpy(),
            )
            for name in spec.data_arrays
        }
        ids = self.table.column("input_ids").combine_chunks()
        self._input_offsets = ids.offsets.to_numpy()
        self._input_values = ids.values.to_numpy().astype(np.int64)
        self._labels = self.table.column("label").to_pylist()
        self._lengths = self.table.column("length").to_numpy()
        self._verified = {
            name: np.zeros(len(info["checksums"]), dtype=bool)
            for name, info in self.meta["arrays"].items()
        }
        self._signatures: dict[tuple[str, int], FileSignature | None] = {}
        self._arrays: dict[str, Any] | None = None
        self._decoders: dict[str, ChunkDecoder | None] = {}

    def _read_index_bytes(self) -> bytes:
        try:
            return self._loc.read_bytes(f"{self.path}/{INDEX}")
        except (FileNotFoundError, OSError) as e:
            raise CacheError(
                f"shard {self.index} listed in the manifest cannot be read at {self.path}: {e}"
            ) from e

    @property
    def arrays(self) -> dict[str, Any]:
        """The shard's Zarr arrays by name, opened on first use."""
        if self._arrays is None:
            import zarr

            store = self._loc.zarr_store(self.path, read_only=True)
            with _pipeline_config():
                group = zarr.open_group(store=store, mode="r")
                arrays = {name: self._open_array(group, name) for name in self.meta["arrays"]}
            self._arrays = arrays
            for name, array in arrays.items():
                info = self.meta["arrays"][name]
                if tuple(array.shape) != (info["rows"], info["width"]):
                    raise CacheCorruptError(
                        f"shard {self.index}: array {name!r} has shape {array.shape}, index says "
                        f"{(info['rows'], info['width'])}; {_REPAIR.format(shard=self.index)}"
                    )
        return self._arrays

    def _open_array(self, group: Any, name: str) -> Any:
        """One array of the group; a broken ``zarr.json`` is reported against its own array."""
        try:
            return group[name]
        except Exception as e:  # zarr raises many types for unreadable metadata
            raise CacheCorruptError(
                f"shard {self.index}, array {name!r}: {self.path}/{name}/zarr.json cannot be "
                f"read ({type(e).__name__}: {e}); {_REPAIR.format(shard=self.index)}"
            ) from e

    # ------------------------------------------------------------------ row reads

    def read_rows(
        self,
        name: str,
        start: int,
        stop: int,
        *,
        blocks: BufferPool | None = None,
    ) -> np.ndarray:
        """Stored rows [start, stop) of an array (stored dtype), verifying chunks on first touch.

        The chunks are decoded in the calling thread (to decode in parallel, call it per chunk
        from a pool, as :class:`~cachebrew.cache.read.epoch_reader.ChunkCache` does).
        ``blocks`` supplies reused memory for the decoded chunks (None: fresh memory).

        **Checksums once per reader.** A chunk's crc32 is checked the first time this reader
        decodes it; later reads (the next epochs) skip the check while the chunk file is the
        same file, unchanged: its (device, inode, size, mtime) from ``fstat`` of the file
        just read equals the one recorded when it was checked. A rewritten or replaced
        chunk (a shard repaired or recomputed under a running reader) is checked again. Not
        caught after the first check: a change that keeps size and mtime (in-place media
        corruption the page cache may hide anyway, or a writer that restores the mtime), and
        any change on a remote store (no signature: checked once per reader); run ``cachebrew
        verify`` for a full re-check. On this box the check cost as much as the lz4 decode
        it guards (docs/benchmarks-history.md, "third pass").
        """
        info = self.meta["arrays"][name]
        chunk_rows = info["chunk_rows"]
        if stop <= start:
            return np.empty((0, info["width"]), dtype=stored_dtype(info["stored_dtype"]))
        first, last = start // chunk_rows, (stop - 1) // chunk_rows
        decoder = self._decoder(name)
        if decoder is not None:
            block = self._decode_range(name, decoder, first, last, blocks)
            return block[start - first * chunk_rows : stop - first * chunk_rows]
        if not self.verify or self._verified[name][first : last + 1].all():
            return self._zarr_read(name, start, stop)
        lo, hi = first * chunk_rows, min((last + 1) * chunk_rows, info["rows"])
        block = self._zarr_read(name, lo, hi)
        for chunk in range(first, last + 1):
            if not self._verified[name][chunk]:
                offset = chunk * chunk_rows - lo
                self._check_chunk(name, chunk, block[offset : offset + chunk_rows])
        return block[start - lo : stop - lo]

    def _decoder(self, name: str) -> ChunkDecoder | None:
        if name not in self._decoders:
            dtype = stored_dtype(self.meta["arrays"][name]["stored_dtype"])
            try:
                self._decoders[name] = chunk_decoder(self._loc, f"{self.path}/{name}", dtype)
            except CacheError as e:  # an unreadable zarr.json: name its own array
                raise CacheCorruptError(
                    f"shard {self.index}, array {name!r}: {self.path}/{name}/zarr.json cannot be "
                    f"read ({e}); {_REPAIR.format(shard=self.index)}"
                ) from e
        return self._decoders[name]

    def _decode_range(
        self,
        name: str,
        decoder: ChunkDecoder,
        first: int,
        last: int,
        blocks: BufferPool | None,
    ) -> np.ndarray:
        """Chunks [first, last] decoded (and checked) into one (n * chunk_rows, width) block."""
        info = self.meta["arrays"][name]
        chunk_rows = info["chunk_rows"]
        dtype = stored_dtype(info["stored_dtype"])
        shape = ((last - first + 1) * chunk_rows, info["width"])
        key = ("chunks", chunk_rows, info["width"])  # one chunk's buffers serve its size again
        block = np.empty(shape, dtype) if blocks is None else blocks.take(key, shape, dtype)
        for chunk in range(first, last + 1):
            part = block[(chunk - first) * chunk_rows : (chunk - first + 1) * chunk_rows]
            try:
                signature = decode_chunk(self._loc, decoder, chunk, part)
            except Exception as e:  # codecs raise many types on bad bytes
                raise self._corrupt(name, chunk, f"cannot be decoded ({e})") from e
            if self.verify and not (
                self._verified[name][chunk] and self._signatures.get((name, chunk)) == signature
            ):
                real = min(chunk_rows, info["rows"] - chunk * chunk_rows)  # zarr pads the edge
                self._verified[name][chunk] = False
                self._check_chunk(name, chunk, part[:real])
                self._signatures[(name, chunk)] = signature
        return block

    def _zarr_read(self, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(self.arrays[name][start:stop])
        except CacheError:
            raise
        except Exception as e:  # codec errors surface as many types; find the bad chunk
            chunk_rows = self.meta["arrays"][name]["chunk_rows"]
            for chunk in range(start // chunk_rows, (stop - 1) // chunk_rows + 1):
                lo = chunk * chunk_rows
                try:
                    self.arrays[name][lo : lo + chunk_rows]
                except Exception as inner:
                    raise self._corrupt(name, chunk, f"cannot be decoded ({inner})") from e
            raise CacheError(f"shard {self.index}: reading array {name!r} failed: {e}") from e

    def _check_chunk(self, name: str, chunk: int, data: np.ndarray) -> None:
        expected = self.meta["arrays"][name]["checksums"][chunk]
        actual = chunk_checksum(data)
        if actual != expected:
            raise self._corrupt(name, chunk, f"fails its crc32 check ({actual} != {expected})")
        self._verified[name][chunk] = True

    def _corrupt(self, name: str, chunk: int, what: str) -> CacheCorruptError:
        chunk_rows = self.meta["arrays"][name]["chunk_rows"]
        lo, hi = chunk * chunk_rows, (chunk + 1) * chunk_rows
        data_name = name.removesuffix(".scale")
        ids = overlapping_ids(self.table, data_name, lo, hi)
        return CacheCorruptError(
            f"shard {self.index}, array {name!r}, chunk {chunk} (rows {lo}-{hi - 1}) {what}; "
            f"examples affected: {ids}; {_REPAIR.format(shard=self.index)}"
        )

    def verify_all(self) -> tuple[int, int]:
        """Check every chunk; returns (chunks, stored bytes) checked. Raises CacheCorruptError."""
        chunks = nbytes = 0
        for name, info in self.meta["arrays"].items():
            for start in range(0, info["rows"], info["chunk_rows"]):
                stop = min(start + info["chunk_rows"], info["rows"])
                self._verified[name][start // info["chunk_rows"]] = False
                nbytes += self.read_rows(name, start, stop).nbytes
                chunks += 1
        return chunks, nbytes

    # ------------------------------------------------------------------ examples

    def decoded_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a data array decoded to float32 (ids to int64)."""
        dtype = self.meta["arrays"][name]["dtype"]
        scale = self.read_rows(f"{name}.scale", start, stop) if dtype == "int8" else None
        return decode(self.read_rows(name, start, stop), scale, dtype)

    def record(self, row: int, features: dict[str, np.ndarray]) -> dict[str, Any]:
        """The example dict of index row ``row`` with its decoded ``features``."""
        return {
            "example_id": self.example_ids[row],
            "input_ids": self._input_values[
                self._input_offsets[row] : self._input_offsets[row + 1]
            ],
            "label": label_from_arrow(self._labels[row]),
            "length": int(self._lengths[row]),
            "features": features,
        }

    def example(self, row: int) -> dict[str, Any]:
        """One example by index row (reads only the chunks it overlaps)."""
        features = {}
        for name, (offsets, lengths) in self.rows.items():
            start = int(offsets[row])
            features[name] = self.decoded_rows(name, start, start + int(lengths[row]))
        return self.record(row, features)


_REPAIR = (
    "the cache is corrupt: delete manifest.json and shards/{shard:05d}, then rerun precompute "
    "to rewrite that shard"
)
