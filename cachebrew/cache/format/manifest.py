"""``manifest.json`` (the cache's table of contents, written last) and the run record.

``_run.json`` is written when a writer starts: the spec, teacher, corpus and tokenizer identity
and the shard size. A later writer on the same directory resumes only if those agree.
``_done/rank-RRRRR-of-WWWWW.json`` is written by each rank that finished cleanly.
:func:`merge_manifest` turns the published shards into ``manifest.json`` once every rank of the
run is done; a single writer calls it itself on a clean exit.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import re
from typing import Any

from cachebrew._version import __version__
from cachebrew.cache.format.codecs import (
    CHUNK_CHECKSUM,
    CODEC_CONFIGS,
    INDEX_CHECKSUM,
    bytes_checksum,
)
from cachebrew.cache.format.index import parse_index
from cachebrew.cache.format.lm_head import MANIFEST_KEY, head_entry
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.format.storage import (
    DONE,
    INDEX,
    MANIFEST,
    RUN_RECORD,
    SHARDS,
    CacheLocation,
)
from cachebrew.errors import CacheError

FORMAT_VERSION = 1
# Fields of _run.json that must agree for a writer to resume a directory.
RUN_IDENTITY = (
    "format_version",
    "spec",
    "teacher",
    "corpus_fingerprint",
    "tokenizer_hash",
    "shard_size",
)
MANIFEST_KEYS = ("format_version", "spec", "shards", "arrays", "totals", "teacher")
_MARKER = re.compile(r"rank-(\d{5})-of-(\d{5})\.json$")


def cachebrew_version() -> str:
    """The installed cachebrew version (package metadata, else ``cachebrew.__version__``)."""
    try:
        return importlib.metadata.version("cachebrew")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def run_record(
    spec: FeatureSpec,
    teacher_info: dict[str, Any],
    corpus_fingerprint: str,
    tokenizer_hash: str | None,
    shard_size: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The plain-JSON identity of a precompute run (content of ``_run.json``)."""
    return {
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "teacher": dict(teacher_info),
        "corpus_fingerprint": corpus_fingerprint,
        "tokenizer_hash": tokenizer_hash,
        "shard_size": shard_size,
        "extra": dict(extra),
        "cachebrew_version": cachebrew_version(),
    }


def run_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per identity field that differs between two run records.

    The teacher is compared by what it is (class, kind, config, weights and tokenizer hashes),
    not by how its path was spelled: its ``source`` is recorded but never compared.
    """
    lines = []
    for key in RUN_IDENTITY:
        a, b = old.get(key), new.get(key)
        if key == "teacher":
            lines += _teacher_differences(a or {}, b or {})
        elif a == b:
            continue
        elif key == "spec":
            lines += _spec_differences(a or {"features": []}, new[key])
        else:
            lines.append(f"{key}: cache has {a!r}, this run has {b!r}")
    return lines


def rerun_differences(manifest: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between a complete cache and a run asked to write it again: the identity
    fields (:func:`run_differences`) and the recorded ``extra`` (``max_length``, ``label_names``).
    Empty: the cache is up to date."""
    lines = run_differences(manifest, new)
    old_extra, new_extra = manifest.get("extra") or {}, new.get("extra") or {}
    for key in sorted(set(old_extra) | set(new_extra)):
        if old_extra.get(key) != new_extra.get(key):
            lines.append(
                f"{key}: cache has {old_extra.get(key)!r}, this run has {new_extra.get(key)!r}"
            )
    return lines


def _teacher_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"teacher.{key}: cache has {old.get(key)!r}, this run has {new.get(key)!r}"
        for key in sorted((set(old) | set(new)) - {"source"})
        if old.get(key) != new.get(key)
    ]


def _spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old_f = {f["kind"]: f for f in old["features"]}
    new_f = {f["kind"]: f for f in new["features"]}
    lines = []
    for kind in sorted(set(old_f) | set(new_f)):
        a, b = old_f.get(kind), new_f.get(kind)
        if a is None or b is None:
            lines.append(
                f"spec: feature {kind!r} is {'only in this run' if a is None else 'only in the cache'}"
            )
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                lines.append(
                    f"spec: {kind}.{key}: cache has {a.get(key)!r}, this run has {b.get(key)!r}"
                )
    return lines


def published_shards(loc: CacheLocation) -> list[int]:
    """Indices of the shards whose ``index.arrow`` exists (= completely published)."""
    names = [n for n in loc.listdir(loc.join(SHARDS)) if n.isdigit()]
    return [int(n) for n in names if loc.exists(loc.join(SHARDS, n, INDEX))]


def read_shard_index(loc: CacheLocation, shard: int) -> tuple[Any, dict[str, Any], bytes]:
    """``(table, metadata, raw bytes)`` of a published shard's index."""
    path = loc.join(SHARDS, f"{shard:05d}", INDEX)
    try:
        raw = loc.read_bytes(path)
    except (FileNotFoundError, OSError) as e:
        raise CacheError(f"shard {shard}: cannot read {path}: {e}") from e
    table, meta = parse_index(raw, path)
    return table, meta, raw


def merge_manifest(
    path: str | os.PathLike[str],
    *,
    world_size: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` from the published shards once every rank has finished.

    Rank 0 calls this after a barrier when ``world_size > 1``; a single writer calls it itself.

    Args:
        path: the cache root.
        world_size: the number of ranks of the run; inferred from the completion markers if they
            name only one world size.

    Returns:
        The manifest written.

    Raises:
        CacheError: no run record, a rank without its completion marker, missing shards,
            shards of the wrong size, duplicate example ids or inconsistent widths.
    """
    loc = CacheLocation(path, storage_options)
    run = loc.read_json(loc.join(RUN_RECORD))
    if run is None:
        raise CacheError(f"{loc.path} has no {RUN_RECORD}: no precompute run was started there")
    _check_ranks_done(loc, world_size)
    shards = published_shards(loc)
    expected = list(range(len(shards)))
    if shards != expected:
        missing = sorted(set(range(max(shards) + 1)) - set(shards))
        raise CacheError(f"{loc.path}: shards {missing} are missing; rerun precompute to resume")
    manifest = build_manifest(loc, run, shards)
    loc.write_json_atomic(loc.join(MANIFEST), manifest)
    return manifest


def _check_ranks_done(loc: CacheLocation, world_size: int | None) -> None:
    found = [m.groups() for m in map(_MARKER.match, loc.listdir(loc.join(DONE))) if m]
    sizes = sorted({int(w) for _, w in found})
    if world_size is None:
        if len(sizes) > 1:
            raise CacheError(
                f"{loc.path}: completion markers of world sizes {sizes}; pass world_size"
            )
        world_size = sizes[0] if sizes else 1
    done = {int(r) for r, w in found if int(w) == world_size}
    missing = sorted(set(range(world_size)) - done)
    if missing:
        raise CacheError(
            f"{loc.path}: ranks {missing} of {world_size} have not finished (no completion "
            "marker); rerun precompute on those ranks to resume before merging"
        )


_RUN_FIELDS = ("teacher", "corpus_fingerprint", "tokenizer_hash", "shard_size", "spec", "extra")


def build_manifest(loc: CacheLocation, run: dict[str, Any], shards: list[int]) -> dict[str, Any]:
    """The manifest for ``shards`` (all published, contiguous from 0) of the run ``run``."""
    spec = FeatureSpec.from_dict(run["spec"])
    entries: list[dict[str, Any]] = []
    arrays: dict[str, Any] = {}
    label_types: set[str] = set()
    seen: set[str] = set()
    for shard in shards:
        meta, entry = _shard_entry(loc, shard, run["shard_size"], shard == shards[-1], seen)
        if meta["label_type"] is not None:
            label_types.add(meta["label_type"])
        _accumulate_arrays(arrays, shard, meta["arrays"])
        entries.append(entry)
    if len(label_types) > 1:
        raise CacheError(f"shards hold different label types {sorted(label_types)}")
    logits = spec.get("logits")
    head = {MANIFEST_KEY: head_entry(loc)} if logits and logits.logits_mode == "exact" else {}
    return {
        **head,
        "format_version": FORMAT_VERSION,
        "cachebrew_version": cachebrew_version(),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **{k: run[k] for k in _RUN_FIELDS},
        "label_type": min(label_types, default=None),
        "checksums": {"chunk": CHUNK_CHECKSUM, "index": INDEX_CHECKSUM},
        "codecs": {f.codec: CODEC_CONFIGS[f.codec] for f in spec},
        "arrays": arrays,
        "shards": entries,
        "totals": _totals(spec, entries, arrays),
    }


def _shard_entry(
    loc: CacheLocation, shard: int, shard_size: int, last: bool, seen: set[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(index metadata, manifest entry) of one shard; adds its ids to ``seen``."""
    table, meta, raw = read_shard_index(loc, shard)
    _check_shard(shard, meta, shard_size, last)
    ids = table.column("example_id").to_pylist()
    dupes = seen.intersection(ids)
    if dupes or len(set(ids)) != len(ids):
        raise CacheError(f"shard {shard}: duplicate example ids, e.g. {sorted(dupes)[:5]}")
    seen.update(ids)
    entry = {
        "index": shard,
        "path": f"{SHARDS}/{shard:05d}",
        "num_examples": meta["num_examples"],
        "bytes": loc.size(loc.shard_path(shard)),
        "index_sha256": bytes_checksum(raw),
    }
    return meta, entry


def _check_shard(shard: int, meta: dict[str, Any], shard_size: int, last: bool) -> None:
    n = meta["num_examples"]
    if n > shard_size or (n != shard_size and not last):
        raise CacheError(
            f"shard {shard} has {n} examples, expected {shard_size}: the examples given to the "
            "writers were not aligned to shards (feed rank r the positions writer.owns_position "
            "accepts, in corpus order)"
        )


def _accumulate_arrays(total: dict[str, Any], shard: int, arrays: dict[str, Any]) -> None:
    for name, info in arrays.items():
        entry = total.setdefault(
            name,
            {
                "width": info["width"],
                "dtype": info["dtype"],
                "stored_dtype": info["stored_dtype"],
                "rows": 0,
                "bytes": 0,
                "uncompressed_bytes": 0,
            },
        )
        if entry["width"] != info["width"]:
            raise CacheError(
                f"shard {shard}: array {name!r} has width {info['width']}, other shards {entry['width']}"
            )
        entry["rows"] += info["rows"]
        entry["bytes"] += info["disk_bytes"]
        entry["uncompressed_bytes"] += info["nbytes"]


def _totals(
    spec: FeatureSpec, shards: list[dict[str, Any]], arrays: dict[str, Any]
) -> dict[str, Any]:
    features = {}
    for feature in spec:
        names = [a for a in arrays if a.split(".", 1)[0] == feature.kind]
        features[feature.kind] = {
            "bytes": sum(arrays[a]["bytes"] for a in names),
            "uncompressed_bytes": sum(arrays[a]["uncompressed_bytes"] for a in names),
        }
    return {
        "num_examples": sum(s["num_examples"] for s in shards),
        "num_shards": len(shards),
        "bytes_on_disk": sum(s["bytes"] for s in shards),
        "uncompressed_bytes": sum(a["uncompressed_bytes"] for a in arrays.values()),
        "features": features,
    }


def read_manifest(loc: CacheLocation) -> dict[str, Any]:
    """Read and validate ``manifest.json``.

    Raises:
        CacheError: no manifest (an incomplete cache), an unknown format version, or missing keys.
    """
    manifest = loc.read_json(loc.join(MANIFEST))
    if manifest is None:
        if not loc.exists(loc.root):
            raise CacheError(
                f"{loc.path} does not exist: give the --out of a `cachebrew precompute` run"
            )
        hint = ""
        if loc.exists(loc.join(RUN_RECORD)):
            hint = f" ({len(published_shards(loc))} finished shards from an interrupted run)"
        raise CacheError(
            f"{loc.path} is not a complete cache: no {MANIFEST}{hint}; rerun precompute to resume"
        )
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(
            f"{loc.path}: cache format_version {version!r} is not supported; this cachebrew "
            f"({cachebrew_version()}) reads format_version {FORMAT_VERSION}"
        )
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise CacheError(f"{loc.path}/{MANIFEST} lacks the keys {missing}")
    return manifest


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of a cache manifest (identifies the cache a run was trained on)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
