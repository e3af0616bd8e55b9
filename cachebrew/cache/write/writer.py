"""Write a teacher cache: :class:`CacheWriter` (a context manager) and :func:`remove_cache`.

Life of a write::

    with CacheWriter(path, spec, teacher_info=..., corpus_fingerprint=...) as writer:
        done = writer.completed_example_ids()          # non-empty when resuming
        for position, record in enumerate(corpus):
            if record.id in done or not writer.owns_position(position):
                continue
            writer.add(record.id, features, input_ids=ids, label=label)
    # clean exit: last shard flushed, rank marker, then manifest.json LAST

A shard (``shard_size`` examples, the last one may be shorter) is buffered in memory (encoded),
written whole to ``_staging/<shard>.<random>`` and published by renaming it to ``shards/<shard>``.
An exception inside the ``with`` writes no manifest; finished shards stay, so the same run
started again resumes. **One writer per shard**: two processes must never write the same shard
(use distinct ``rank``s of one ``world_size``). Rank r writes shards r, r + W, r + 2W, ...
and must be given exactly the examples at the corpus positions it owns
(:meth:`CacheWriter.owns_position`), in corpus order, so that the cache does not depend on W.
With ``world_size > 1`` rank 0 calls :func:`~cachebrew.cache.format.manifest.merge_manifest` after a
barrier.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np

from cachebrew.cache.format.codecs import encode
from cachebrew.cache.format.index import normalize_label
from cachebrew.cache.format.manifest import FORMAT_VERSION, merge_manifest, run_record
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.format.storage import DONE, CacheLocation, done_marker_name
from cachebrew.cache.write.ownership import WriterLock, check_owned, lock_name, remove_owned
from cachebrew.cache.write.prepare import prepare_example
from cachebrew.cache.write.resume import find_published, prepare_directory
from cachebrew.cache.write.shard_writer import ShardBuffer, write_shard
from cachebrew.errors import CacheError, ConfigError

logger = logging.getLogger(__name__)

MAX_SHARD_SIZE = 1_000_000


class CacheWriter:
    """Writes teacher features into a cache directory or fsspec URL, shard by shard.

    Args:
        path: cache root (local path or fsspec URL).
        spec: what to store.
        teacher_info: teacher identity (class, config hash, weights hash ...), plain JSON.
        corpus_fingerprint: identifies the corpus (and its order); a resumed run must match.
        tokenizer_hash: identifies the teacher tokenizer, or None.
        shard_size: examples per shard (1 .. 1,000,000). One shard is held in memory.
        overwrite: replace a complete or started cache at ``path`` (single rank only).
        extra: free-form JSON recorded in the manifest (not compared on resume).
        rank, world_size: this process writes shards ``i`` with ``i % world_size == rank``.
        chunk_bytes: target uncompressed bytes per Zarr chunk (rows are chunked, 1-4 MB is good).
        storage_options: fsspec options.
        wait_seconds: how long to wait for another writer's lock on ``path`` (0: refuse at
            once, ``float("inf")``: wait until it finishes).

    Raises:
        ConfigError: a bad argument (names the value, the limit and why).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        spec: FeatureSpec,
        *,
        teacher_info: dict[str, Any],
        corpus_fingerprint: str,
        tokenizer_hash: str | None = None,
        shard_size: int = 256,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        chunk_bytes: int = 2 * 2**20,
        storage_options: dict[str, Any] | None = None,
        wait_seconds: float = 0.0,
    ):
        _check_arguments(spec, shard_size, rank, world_size, chunk_bytes, overwrite)
        self.spec = spec
        self.shard_size, self.rank, self.world_size = shard_size, rank, world_size
        self.chunk_bytes, self.overwrite = chunk_bytes, overwrite
        self.manifest: dict[str, Any] | None = None
        # The arrays of the shards this writer wrote (not those a resumed run found): bytes on
        # disk and before compression (precompute's progress bar shows both).
        self.bytes_written = 0
        self.uncompressed_bytes_written = 0
        self._loc = CacheLocation(path, storage_options)
        self._lock = WriterLock(self._loc, wait_seconds, lock_name(rank, world_size))
        self._run = run_record(
            spec, teacher_info, corpus_fingerprint, tokenizer_hash, shard_size, extra or {}
        )
        self._state = "new"
        self._completed: dict[int, list[str]] = {}
        self._seen: set[str] = set()
        self._widths: dict[str, int] = {}
        self._label_type: str | None = None
        self._buffer = ShardBuffer()
        self._next_shard = rank

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> CacheWriter:
        if self._state != "new":
            raise CacheError("a CacheWriter can be entered only once; create a new one")
        # Refuse a foreign directory before the lock file is created in it, then again under
        # the lock (another writer may have changed it while we waited).
        check_owned(self._loc, "write a cache")
        with contextlib.ExitStack() as undo:
            self._lock.__enter__()
            undo.callback(self._lock.__exit__, None, None, None)
            prepare_directory(
                self._loc, self._run, overwrite=self.overwrite, world_size=self.world_size
            )
            # The marker means "this rank's latest run finished"; rewritten on a clean exit.
            marker = done_marker_name(self.rank, self.world_size)
            self._loc.remove(self._loc.join(DONE, marker))
            self._load_completed()
            self._next_shard = self._next_free_shard(self.rank)
            undo.pop_all()
        self._state = "open"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is not None:
                self._abort()
                return
            try:
                self._finish()
            except BaseException:
                self._abort()
                raise
        finally:
            self._lock.__exit__(None, None, None)

    def _load_completed(self) -> None:
        published = find_published(self._loc, self.spec, self.owns_shard)
        self._completed = published.shards
        self._seen.update(i for ids in published.shards.values() for i in ids)
        self._widths.update(published.widths)
        self._label_type = self._label_type or published.label_type

    def _finish(self) -> None:
        if self._state != "open":
            return
        if self._buffer:
            self._flush()
        marker = {
            "rank": self.rank,
            "world_size": self.world_size,
            "shards": sorted(s for s in self._completed if self.owns_shard(s)),
            "format_version": FORMAT_VERSION,
        }
        self._loc.write_json_atomic(
            self._loc.join(DONE, done_marker_name(self.rank, self.world_size)), marker
        )
        if self.world_size == 1:
            self.manifest = merge_manifest(
                self._loc.path, world_size=1, storage_options=self._loc.storage_options
            )
        self._state = "closed"

    def _abort(self) -> None:
        dropped = len(self._buffer)
        self._buffer = ShardBuffer()
        self._state = "closed"
        logger.warning(
            "cache write to %s stopped by an error: no manifest written, %d finished shards kept, "
            "%d buffered examples dropped; rerun to resume",
            self._loc.path,
            len(self._completed),
            dropped,
        )

    # ------------------------------------------------------------------ resume helpers

    def completed_shards(self) -> list[int]:
        """Indices of the shards already published (by any rank)."""
        return sorted(self._completed)

    def completed_example_ids(self) -> set[str]:
        """Ids of every example in a published shard: skip these when resuming."""
        return {i for ids in self._completed.values() for i in ids}

    def owns_shard(self, shard: int) -> bool:
        """Whether this rank writes shard ``shard``."""
        return shard % self.world_size == self.rank

    def owns_position(self, position: int) -> bool:
        """Whether the example at corpus ``position`` (0-based) belongs to this rank's shards."""
        return self.owns_shard(position // self.shard_size)

    def _next_free_shard(self, start: int) -> int:
        shard = start
        while shard in self._completed:
            shard += self.world_size
        return shard

    # ------------------------------------------------------------------ adding

    def add(
        self,
        example_id: str,
        features: Mapping[str, object],
        *,
        input_ids: object,
        label: object = None,
        length: int | None = None,
    ) -> None:
        """Buffer one example; writes the shard when it holds ``shard_size`` examples.

        Args:
            example_id: stable unique id (str).
            features: ``{name: array}`` for every name in ``spec.input_names``; shapes in
                :mod:`cachebrew.cache.write.prepare` (logits raw, hidden (L, D), attention (H, L, L)).
            input_ids: (L,) teacher input ids.
            label: int, float, list of them (token labels) or None.
            length: tokens L; defaults to ``len(input_ids)``.

        Raises:
            CacheError: writer not open, duplicate id, features not matching the spec or the
                widths of earlier examples, or a failed shard write (names shard and path).
        """
        if self._state != "open":
            raise CacheError("the writer is not open: use it as `with CacheWriter(...) as writer:`")
        if not isinstance(example_id, str) or not example_id:
            raise CacheError(f"example_id must be a non-empty str, got {example_id!r}")
        if example_id in self._seen:
            raise CacheError(
                f"example {example_id!r} was already written (when resuming, skip "
                "writer.completed_example_ids())"
            )
        try:
            self._buffer_example(example_id, features, input_ids, label, length)
        except CacheError as e:
            raise CacheError(f"example {example_id!r}: {e}") from e
        self._seen.add(example_id)
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def _buffer_example(
        self,
        example_id: str,
        features: Mapping[str, object],
        input_ids: object,
        label: object,
        length: int | None,
    ) -> None:
        ids = np.asarray(input_ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise CacheError(f"input_ids must be a 1-D integer sequence, got shape {ids.shape}")
        length = len(ids) if length is None else int(length)
        label_value, label_type = normalize_label(label)
        if label_type and self._label_type and label_type != self._label_type:
            raise CacheError(f"label type {label_type!r} differs from earlier {self._label_type!r}")
        encoded = self._encode(prepare_example(self.spec, features, length))
        self._buffer.append(example_id, encoded, label_value, ids.astype(np.int32), length)
        self._label_type = self._label_type or label_type

    def _encode(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, array in arrays.items():
            dtype = self.spec.feature_of(name).array_dtype(name)
            if dtype == "uint16" and array.size and array.max() > np.iinfo(np.uint16).max:
                fix = (
                    "draw fewer samples per row"
                    if name.endswith("_counts")
                    else ("the vocab_size given is smaller than the teacher's logits")
                )
                raise CacheError(
                    f"{name!r}: {int(array.max()):,} does not fit uint16 (at most 65,535); {fix}"
                )
            out[name], scale = encode(array, dtype)
            # the stored width (packed ids: bytes), as the shard metadata records it on resume
            width = self._widths.setdefault(name, out[name].shape[1])
            if out[name].shape[1] != width:
                raise CacheError(f"{name!r} has width {array.shape[1]}, earlier examples {width}")
            if scale is not None:
                out[f"{name}.scale"] = scale
        return out

    # ------------------------------------------------------------------ shard writing

    def _flush(self) -> None:
        shard, buffer = self._next_shard, self._buffer
        arrays = write_shard(
            self._loc, shard, self.spec, buffer, self._label_type, self.chunk_bytes
        )
        self.bytes_written += sum(a["disk_bytes"] for a in arrays.values())
        self.uncompressed_bytes_written += sum(a["nbytes"] for a in arrays.values())
        self._completed[shard] = list(buffer.ids)
        self._buffer = ShardBuffer()
        self._next_shard = self._next_free_shard(shard + self.world_size)


def _check_arguments(
    spec: FeatureSpec,
    shard_size: int,
    rank: int,
    world_size: int,
    chunk_bytes: int,
    overwrite: bool,
) -> None:
    problems = []
    if not isinstance(spec, FeatureSpec):
        problems.append(f"spec must be a FeatureSpec, got {type(spec).__name__}")
    if not isinstance(shard_size, int) or not 1 <= shard_size <= MAX_SHARD_SIZE:
        problems.append(
            f"shard_size={shard_size!r} must be an int in [1, {MAX_SHARD_SIZE}]: a shard is "
            "buffered in memory and is the unit of resume"
        )
    if not isinstance(world_size, int) or world_size < 1:
        problems.append(f"world_size={world_size!r} must be an int >= 1")
    elif not isinstance(rank, int) or not 0 <= rank < world_size:
        problems.append(f"rank={rank!r} must be an int in [0, world_size={world_size})")
    if not isinstance(chunk_bytes, int) or not 4096 <= chunk_bytes <= 2**30:
        problems.append(
            f"chunk_bytes={chunk_bytes!r} must be an int in [4096, 2**30]: chunks of 1-4 MB "
            "decode fastest"
        )
    if overwrite and world_size != 1:
        problems.append(
            f"overwrite=True with world_size={world_size}: ranks would delete each other's "
            "shards; call remove_cache(path) on rank 0 before the barrier instead"
        )
    if problems:
        raise ConfigError(problems)


def remove_cache(
    path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> None:
    """Delete a cache (its manifest first, so it never looks complete half-deleted).

    Raises:
        CacheError: ``path`` is not a cache, or holds files cachebrew did not write (named;
            nothing is removed). CacheLockedError: a writer is running on it.
    """
    loc = CacheLocation(path, storage_options)
    check_owned(loc, "remove the cache")
    if not loc.exists(loc.root):
        return
    with WriterLock(loc):
        check_owned(loc, "remove the cache")
        remove_owned(loc)
