"""Read a teacher cache: :func:`open_cache` -> :class:`CacheReader`.

Examples come back as dicts::

    {"example_id": str, "input_ids": (L,) int64, "label": int | float | ndarray | None,
     "length": int, "features": {array name: (rows, width) float32 (top-k ids int64)}}

Feature arrays are the stored 2-D rows (``restore_shape`` turns attention rows back into
``(H, L, L)``). Streaming (:meth:`CacheReader.iter_shard`, :meth:`CacheReader.iter_examples`)
is an unshuffled :class:`~cachebrew.cache.read.epoch_reader.EpochReader` pass, the same
chunk-aligned reads :class:`~cachebrew.cache.feed.dataset.CacheDataset` makes; :meth:`CacheReader.get`
reads only the chunks one example overlaps. Every chunk's crc32 is checked the first time it is
read. Each shard's ``index.arrow`` is read and parsed once per reader; the id catalog built from
it (:meth:`CacheReader.example_ids`, :meth:`CacheReader.rows_of`) is memoised.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cachebrew.cache.format.lm_head import head_problems, load_head
from cachebrew.cache.format.manifest import read_manifest
from cachebrew.cache.format.spec import FeatureSpec, StoredFeature, layer_names
from cachebrew.cache.format.storage import CacheLocation
from cachebrew.cache.logits.exact import LMHead
from cachebrew.cache.read.epoch_reader import ChunkCache, EpochReader
from cachebrew.cache.read.integrity import check_manifest, shard_problems
from cachebrew.cache.read.order import corpus_items, cut_runs, plan_epoch, run_rows
from cachebrew.cache.read.shard import ShardReader
from cachebrew.errors import CacheCorruptError, CacheError, CacheMismatchError

DEFAULT_WINDOW_BYTES = 16 * 2**20


def open_cache(
    path: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    verify: bool = True,
) -> CacheReader:
    """Open a complete cache for reading.

    Args:
        path: cache root (local path or fsspec URL such as ``memory://`` or ``s3://``).
        storage_options: fsspec options.
        verify: check chunk checksums on first read (cheap: crc32).

    Raises:
        CacheError: no manifest (an unfinished precompute: rerun it to resume), an unknown
            format version, or a manifest that does not match the cache (its totals, its
            shard list against the disk, a shard path leading outside the root).
    """
    loc = CacheLocation(path, storage_options)
    manifest = read_manifest(loc)
    check_manifest(loc, manifest)
    return CacheReader(loc, manifest, verify=verify)


class CacheReader:
    """Reads examples and metadata of one cache (see :func:`open_cache`)."""

    def __init__(self, loc: CacheLocation, manifest: dict[str, Any], *, verify: bool = True):
        self.manifest = manifest
        self.spec = FeatureSpec.from_dict(manifest["spec"])
        self.verify = verify
        self._loc = loc
        self._shards: dict[int, ShardReader] = {}
        self._catalog: IdCatalog | None = None
        self._head: LMHead | None = None

    @property
    def path(self) -> str:
        return self._loc.path

    @property
    def num_examples(self) -> int:
        return int(self.manifest["totals"]["num_examples"])

    def __len__(self) -> int:
        return self.num_examples

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    def shard(self, index: int) -> ShardReader:
        """The reader of shard ``index`` (index file checked against the manifest on first use)."""
        if index not in self._shards:
            if not 0 <= index < self.num_shards:
                raise CacheError(f"shard {index} does not exist; the cache has {self.num_shards}")
            entry = self.manifest["shards"][index]
            self._shards[index] = ShardReader(self._loc, entry, self.spec, self.verify)
        return self._shards[index]

    def lm_head(self) -> LMHead:
        """The LM head of an exact-logits cache (loaded once, sha256 checked; exact_logits.py)."""
        if self._head is None:
            self._head = load_head(self._loc, self.manifest)
        return self._head

    @property
    def catalog(self) -> IdCatalog:
        """Every example id with its shard and row, built once from each shard's index."""
        if self._catalog is None:
            self._catalog = IdCatalog.build(
                [self.shard(k).example_ids for k in range(self.num_shards)]
            )
        return self._catalog

    def example_ids(self) -> list[str]:
        """Every example id, in shard and row order (a new list; the catalog is memoised)."""
        return list(self.catalog.example_ids)

    def rows_of(self, example_ids: Iterable[str]) -> tuple[dict[int, np.ndarray], list[str]]:
        """The ascending rows of every shard holding one of ``example_ids``, and unknown ids.

        Returns:
            ``({shard: (n_k,) int64 rows} for every shard, [ids not in the cache])``.
        """
        return self.catalog.rows_of(example_ids, self.num_shards)

    def _locate(self, example_id: str) -> tuple[int, int]:
        try:
            return self.catalog.locate(example_id)
        except KeyError:
            raise KeyError(f"example {example_id!r} is not in the cache {self.path}") from None

    def get(self, example_id: str) -> dict[str, Any]:
        """One example by id (random access; prefer streaming for whole passes).

        Raises:
            KeyError: unknown id.
            CacheCorruptError: a chunk it overlaps fails its checksum.
        """
        shard, row = self._locate(example_id)
        return self.shard(shard).example(row)

    def iter_shard(
        self, shard: int, *, window_bytes: int = DEFAULT_WINDOW_BYTES
    ) -> Iterator[dict[str, Any]]:
        """Every example of one shard, in row order, read in chunk-aligned windows."""
        return self.iter_examples([shard], window_bytes=window_bytes)

    def iter_examples(
        self,
        shard_order: Sequence[int] | None = None,
        *,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
    ) -> Iterator[dict[str, Any]]:
        """Every example once, shard by shard (``shard_order`` defaults to 0, 1, ...), in row
        order: an unshuffled :class:`EpochReader` pass over runs of about ``window_bytes``."""
        order = range(self.num_shards) if shard_order is None else shard_order
        rows_per_run = run_rows(self.manifest, window_bytes)
        items = np.concatenate(
            [
                corpus_items({k: np.arange(int(self.manifest["shards"][k]["num_examples"]))})
                for k in order
            ]
            or [np.zeros((0, 2), dtype=np.int64)]
        )
        total = len(items)
        if total == 0:
            return
        plan = plan_epoch(
            cut_runs(items, rows_per_run),
            seed=0,
            epoch=0,
            rank=0,
            shuffle=False,
            buffer_size=1,
            num_examples=total,
        )
        arrays = [
            *self.spec.data_arrays,
            *(n for n in self.manifest["arrays"] if n.endswith(".scale")),
        ]
        epoch = EpochReader(self, plan, arrays, ChunkCache(4 * window_bytes))
        for examples in epoch.batches(range(-(-total // rows_per_run)), rows_per_run):
            yield from examples

    # ------------------------------------------------------------------ checks

    def require(
        self,
        features: FeatureSpec | Iterable[str],
        *,
        widths: Mapping[str, int] | None = None,
        example_ids: Iterable[str] | None = None,
    ) -> None:
        """Check that the cache holds what a run needs; every problem is reported at once.

        Args:
            features: a FeatureSpec (e.g. from ``feature_spec_from_matches``), or names such as
                ``'hidden.4'``, ``'hidden:4,8'``, ``'logits'``.
            widths: expected widths by array name (e.g. ``{'hidden.4': 768}``).
            example_ids: ids the run will read.

        Raises:
            CacheMismatchError: listing what is missing and what the cache stores.
        """
        if isinstance(features, FeatureSpec):
            problems = [p for f in features for p in self._feature_problems(f)]
        else:
            stored = set(self.spec.input_names) | set(self.spec.data_arrays)
            problems = [
                f"{name!r} is not stored" for name in layer_names(features) if name not in stored
            ]
        problems += self._width_problems(widths or {})
        if example_ids is not None:
            problems += self._id_problems(example_ids)
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise CacheMismatchError(
                f"the cache {self.path} does not hold what this run needs:\n{lines}\n"
                f"it stores: {', '.join(self.spec.input_names)} "
                f"(spec {self.spec.to_cli()}); rerun precompute with a matching feature spec"
            )

    def _feature_problems(self, needed: StoredFeature) -> list[str]:
        stored = self.spec.get(needed.kind)
        if stored is None:
            return [f"{needed.kind} is not stored (needed: {', '.join(needed.input_names)})"]
        problems = [
            f"{needed.kind}.{layer} is not stored"
            for layer in needed.layers
            if layer not in stored.layers
        ]
        if needed.kind == "logits":
            if needed.reduction == "raw" and stored.reduction == "logprobs":
                problems.append(
                    "raw logits are needed (kd mse / flsw) but the cache stores log-probs"
                )
            sparse = stored.logits_mode is not None  # the sparse KD losses read it as it is
            if stored.topk and not sparse and (not needed.topk or needed.topk > stored.topk):
                problems.append(
                    f"logits top-{needed.topk or 'all'} are needed but the cache stores top-{stored.topk}"
                )
        return problems

    def _width_problems(self, widths: Mapping[str, int]) -> list[str]:
        arrays = self.manifest["arrays"]
        problems = []
        for name, width in widths.items():
            if name in arrays and arrays[name]["width"] != width:
                problems.append(
                    f"{name!r} has width {arrays[name]['width']}, the run expects {width}"
                )
            elif name not in arrays:
                problems.append(f"{name!r} is not stored")
        return problems

    def _id_problems(self, example_ids: Iterable[str]) -> list[str]:
        missing = self.rows_of(example_ids)[1]
        if not missing:
            return []
        return [f"{len(missing)} example ids are not in the cache, e.g. {missing[:5]}"]

    def verify_all(self) -> dict[str, Any]:
        """Check every index (against the manifest and its arrays), every chunk checksum and
        the sha256 of an exact-logits cache's LM head.

        Returns:
            ``{"ok": bool, "shards": n, "chunks": n, "bytes": stored bytes checked,
            "problems": [message, ...]}`` (one problem at most per shard).
        """
        report: dict[str, Any] = {"ok": True, "shards": 0, "chunks": 0, "bytes": 0, "problems": []}
        for index in range(self.num_shards):
            try:
                shard = self.shard(index)
                problems = shard_problems(self.manifest["shards"][index], shard.table, shard.meta)
                if problems:
                    raise CacheCorruptError("; ".join(problems))
                chunks, nbytes = shard.verify_all()
            except CacheError as e:
                report["problems"].append(str(e))
                continue
            report["shards"] += 1
            report["chunks"] += chunks
            report["bytes"] += nbytes
        report["problems"] += head_problems(self._loc, self.manifest, full=True)
        report["ok"] = not report["problems"]
        return report


@dataclass(frozen=True)
class IdCatalog:
    """Every example id of a cache with its shard and row, from one pass over the indexes.

    Attributes:
        example_ids: ids in shard and row order.
        shard_starts: (num_shards + 1,) catalog position of each shard's first id, then N.
        positions: id -> catalog position.
    """

    example_ids: list[str]
    shard_starts: np.ndarray
    positions: dict[str, int]

    @classmethod
    def build(cls, ids_per_shard: Sequence[Sequence[str]]) -> IdCatalog:
        """The catalog of shards holding ``ids_per_shard[k]`` in row order."""
        ids = [i for shard_ids in ids_per_shard for i in shard_ids]
        sizes = [len(shard_ids) for shard_ids in ids_per_shard]
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        return cls(ids, starts, {example_id: p for p, example_id in enumerate(ids)})

    def locate(self, example_id: str) -> tuple[int, int]:
        """``(shard, row)`` of an id. Raises KeyError for an unknown id."""
        position = self.positions[example_id]
        shard = int(np.searchsorted(self.shard_starts, position, side="right")) - 1
        return shard, position - int(self.shard_starts[shard])

    def rows_of(
        self, example_ids: Iterable[str], num_shards: int
    ) -> tuple[dict[int, np.ndarray], list[str]]:
        """See :meth:`CacheReader.rows_of` (duplicated ids are selected once)."""
        found: list[int] = []
        unknown: list[str] = []
        for example_id in example_ids:
            position = self.positions.get(example_id)
            if position is None:
                unknown.append(example_id)
            else:
                found.append(position)
        positions = np.unique(np.asarray(found, dtype=np.int64))
        cuts = np.searchsorted(positions, self.shard_starts)
        rows = {
            k: positions[cuts[k] : cuts[k + 1]] - self.shard_starts[k] for k in range(num_shards)
        }
        return rows, unknown
