"""The teacher cache (format v1, DESIGN §4): feature spec, writer, reader.

Every name below loads its room on first use, so importing one room (``distill/`` imports
``cache.logits`` only) does not load the others, nor fsspec, zarr or pyarrow.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as the type checker sees them; at run time, __getattr__ below
    from cachebrew.cache.format.codecs import decode, encode
    from cachebrew.cache.format.manifest import FORMAT_VERSION, merge_manifest
    from cachebrew.cache.format.shapes import restore_shape
    from cachebrew.cache.format.spec import (
        CODECS,
        DTYPES,
        KINDS,
        FeatureSpec,
        StoredFeature,
        feature_spec_from_matches,
        parse_feature_spec,
    )
    from cachebrew.cache.read.reader import CacheReader, open_cache
    from cachebrew.cache.tools.compare import compare_caches
    from cachebrew.cache.tools.describe import describe_cache
    from cachebrew.cache.write.prepare import prepare_example
    from cachebrew.cache.write.writer import CacheWriter, remove_cache

_LAZY = {
    "CODECS": "cachebrew.cache.format.spec",
    "DTYPES": "cachebrew.cache.format.spec",
    "KINDS": "cachebrew.cache.format.spec",
    "FeatureSpec": "cachebrew.cache.format.spec",
    "StoredFeature": "cachebrew.cache.format.spec",
    "feature_spec_from_matches": "cachebrew.cache.format.spec",
    "parse_feature_spec": "cachebrew.cache.format.spec",
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


__all__ = [  # the names of _LAZY
    "CODECS",
    "DTYPES",
    "KINDS",
    "FeatureSpec",
    "StoredFeature",
    "feature_spec_from_matches",
    "parse_feature_spec",
    "CacheWriter",
    "remove_cache",
    "CacheReader",
    "open_cache",
    "merge_manifest",
    "FORMAT_VERSION",
    "describe_cache",
    "compare_caches",
    "encode",
    "decode",
    "prepare_example",
    "restore_shape",
]
