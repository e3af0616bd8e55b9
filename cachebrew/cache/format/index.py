"""A shard's ``index.arrow``: one row per example, plus the shard's metadata and chunk checksums.

Columns (Arrow IPC file, uncompressed):

- ``example_id``: string, unique in the cache.
- ``<array>.offset`` / ``<array>.length``: int64 row range of the example in each data array
  (``int8`` scale arrays share their data array's rows).
- ``label``: nullable. Its Arrow type depends on the labels given: ``int64`` (class ids),
  ``float64`` (regression), ``list<int64>`` (token labels), ``list<float64>`` (multi-label
  targets), ``null`` when no example has a label. One cache holds one label type.
- ``input_ids``: ``list<int32>``, the teacher's input ids.
- ``length``: int32, the example's number of tokens.

Schema metadata key ``cachebrew`` holds JSON: ``shard``, ``num_examples``, ``label_type`` and per
array ``rows``, ``width``, ``dtype`` (storage dtype), ``stored_dtype`` (numpy), ``chunk_rows``,
``checksums`` (crc32 per row chunk, in chunk order), ``nbytes`` (uncompressed stored bytes) and
``disk_bytes``. A shard is therefore self-contained; the manifest adds a sha256 of this file.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from cachebrew.errors import CacheError

META_KEY = b"cachebrew"
LABEL_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "int_list": pa.list_(pa.int64()),
    "float_list": pa.list_(pa.float64()),
}

Label = int | float | list[int] | list[float] | None
_NO_IDS = np.zeros(0, dtype=np.int32)


def normalize_label(label: object) -> tuple[Label, str | None]:
    """A label as plain Python data plus its type name (see :data:`LABEL_TYPES`).

    Raises:
        CacheError: not a number, a flat sequence of numbers, or None.
    """
    if label is None:
        return None, None
    if hasattr(label, "tolist"):  # numpy arrays and scalars, torch tensors
        label = label.tolist()
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        return int(label), "int"
    if isinstance(label, numbers.Real) and not isinstance(label, bool):
        return float(label), "float"
    if isinstance(label, Sequence) and not isinstance(label, str | bytes):
        values = list(label)
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
            return [int(v) for v in values], "int_list"
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            return [float(v) for v in values], "float_list"
    raise CacheError(
        f"unsupported label {label!r}: give an int, a float, a flat list of them, or None"
    )


def build_index(
    example_ids: Sequence[str],
    rows: Mapping[str, Sequence[int]],
    labels: Sequence[Label],
    label_type: str | None,
    input_ids: Sequence[np.ndarray],
    lengths: Sequence[int],
) -> pa.Table:
    """The index table of one shard (metadata is attached by :func:`serialize_index`).

    Args:
        example_ids: n ids, in row order.
        rows: ``{data array: n row counts}``; offsets are their running sums.
        labels: n labels from :func:`normalize_label`.
        label_type: their common type, or None when all are None.
        input_ids: n (L_i,) int arrays.
        lengths: n token counts.
    """
    columns: dict[str, pa.Array] = {"example_id": pa.array(list(example_ids), pa.string())}
    for name, counts in rows.items():
        count_arr = np.asarray(counts, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(count_arr)[:-1]]).astype(np.int64)
        columns[f"{name}.offset"] = pa.array(offsets[: len(count_arr)])
        columns[f"{name}.length"] = pa.array(count_arr)
    label_arrow = LABEL_TYPES[label_type] if label_type else pa.null()
    columns["label"] = pa.array(list(labels), type=label_arrow)
    flat = np.concatenate([np.asarray(x, dtype=np.int32) for x in input_ids] or [_NO_IDS])
    ids_offsets = np.concatenate([[0], np.cumsum([len(x) for x in input_ids])]).astype(np.int32)
    columns["input_ids"] = pa.ListArray.from_arrays(
        pa.array(ids_offsets, pa.int32()), pa.array(flat, pa.int32())
    )
    columns["length"] = pa.array(np.asarray(lengths, dtype=np.int32))
    return pa.table(columns)


def serialize_index(table: pa.Table, meta: Mapping[str, Any]) -> bytes:
    """Arrow IPC file bytes of ``table`` with ``meta`` as JSON schema metadata."""
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def parse_index(data: bytes, where: str) -> tuple[pa.Table, dict[str, Any]]:
    """Inverse of :func:`serialize_index`.

    Raises:
        CacheError: the bytes are not an index written by cachebrew (``where`` names the file).
    """
    try:
        table = ipc.open_file(pa.BufferReader(data)).read_all()
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except (pa.ArrowInvalid, KeyError, ValueError) as e:
        raise CacheError(f"{where} is not a readable cachebrew index: {e}") from e
    return table, meta


def label_from_arrow(value: Any) -> Label | np.ndarray:
    """A label read back: int/float, a numpy array for list labels, or None."""
    if isinstance(value, list):
        return np.asarray(value)
    return value  # type: ignore[no-any-return]


def overlapping_ids(
    table: pa.Table, array: str, start: int, stop: int, limit: int = 20
) -> list[str]:
    """Ids of the examples whose rows of ``array`` intersect [start, stop)."""
    offsets = table.column(f"{array}.offset").to_numpy()
    lengths = table.column(f"{array}.length").to_numpy()
    hit = (offsets < stop) & (offsets + lengths > start)
    ids = table.column("example_id").to_pylist()
    return [ids[i] for i in np.flatnonzero(hit)[:limit]]
