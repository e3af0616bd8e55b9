"""The teacher cache (format v1, DESIGN §4): feature spec, writer, reader.

``cachebrew.cache.format.spec`` is imported eagerly (it is light: config code derives specs from it);
the writer and reader, which pull in zarr and pyarrow, load on first use.

Layout::

    CACHE/manifest.json             written last, atomically; absent = not a (complete) cache
    CACHE/_run.json                 identity of the run that writes the cache (for resume)
    CACHE/_done/rank-R-of-W.json    per-rank completion markers
    CACHE/_staging/                 shards being written (ignored by readers)
    CACHE/shards/00000/             Zarr v3 group: one [rows, width] array per stored array
    CACHE/shards/00000/index.arrow  example ids, row offsets, labels, input ids, chunk checksums
"""

from __future__ import annotations

import importlib
from typing import Any

from cachebrew.cache.format.spec import (
    CODECS,
    DTYPES,
    KINDS,
    FeatureSpec,
    StoredFeature,
    feature_spec_from_matches,
    parse_feature_spec,
)

_LAZY = {
    "CacheWriter": "cachebrew.cache.write.writer",
    "remove_cache": "cachebrew.cache.write.writer",
    "CacheReader": "cachebrew.cache.read.reader",
    "open_cache": "cachebrew.cache.read.reader",
    "merge_manifest": "cachebrew.cache.format.manifest",
    "FORMAT_VERSION": "cachebrew.cache.format.manifest",
    "describe_cache": "cachebrew.cache.tools.describe",
    "compare_caches": "cachebrew.cache.tools.compare",
    "encode": "cachebrew.cache.format.codecs",
    "decode": "cachebrew.cache.format.codecs",
    "prepare_example": "cachebrew.cache.write.prepare",
    "restore_shape": "cachebrew.cache.format.shapes",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cachebrew.cache' has no attribute {name!r}")


__all__ = [
    "CODECS",
    "DTYPES",
    "KINDS",
    "FeatureSpec",
    "StoredFeature",
    "feature_spec_from_matches",
    "parse_feature_spec",
    *_LAZY,
]
