"""Read corpora into records with stable example ids.

Formats (``READERS``, chosen by extension, or a directory for ``datasets``' ``save_to_disk``):
jsonl, csv, tsv (tab-separated, no quoting, as in GLUE), parquet, and HF datasets saved to disk
(read with pyarrow directly; the ``datasets`` package is not needed).

Example ids come from ``id_field`` or are derived as ``"{stem}:{row}:{sha1(text)[:8]}"``: the
file stem (directory name for HF datasets, plus ``.{split}``), the 0-based row index and a hash
of the content (the text; ``text + "\\n" + text_pair`` for pairs; words joined by spaces for
pre-tokenized text). The same rows in any format under the same stem get the same ids, and
an edited row gets a new id, so a stale cache entry is never reused.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cachebrew.errors import ConfigError
from cachebrew.files import update_with_file, utf8_lines

Label = int | float | list[int] | None


@dataclass(frozen=True)
class Record:
    """One example. ``text`` is a list of words for pre-tokenized (tagging) corpora; ``label``
    is an int (or float for regression), a list of ints per word, or None (unlabelled)."""

    example_id: str
    text: str | list[str]
    text_pair: str | None = None
    label: Label = None


@dataclass
class Corpus:
    """Records plus what identifies them.

    Attributes:
        records: in file order.
        fingerprint: sha256 of the file bytes (every file of a directory) and the field choices.
        columns: the columns found in the source.
        label_names: sorted string labels (label i is ``label_names[i]``), None for numeric labels.
    """

    records: list[Record]
    fingerprint: str
    columns: list[str]
    label_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


def _read_jsonl(path: Path, fields: list[str]) -> list[dict[str, Any]]:
    rows = []
    for line_number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{line_number}: invalid JSON: {error}") from error
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{line_number}: expected a JSON object per line")
        rows.append(row)
    return rows


def _read_delimited(path: Path, fields: list[str], delimiter: str) -> pa.Table:
    from pyarrow import csv

    # text and id columns stay strings ("007", "NA" and "null" are texts, not numbers or nulls)
    convert = csv.ConvertOptions(
        column_types={name: pa.string() for name in fields}, strings_can_be_null=False
    )
    parse = csv.ParseOptions(delimiter=delimiter, quote_char=False if delimiter == "\t" else '"')
    for _ in utf8_lines(path):  # pyarrow's own UTF-8 error names no line
        pass
    try:
        return csv.read_csv(path, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as error:
        raise ConfigError(f"{path}: cannot parse: {error}") from error


def _read_arrow_file(path: Path) -> pa.Table:
    """``save_to_disk`` writes IPC *stream* files; accept the IPC file format too."""
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _read_hf_disk(path: Path, fields: list[str]) -> pa.Table:
    state_path = path / "state.json"
    if not state_path.is_file():
        raise ConfigError(f"{path} has no state.json: not a dataset saved with save_to_disk")
    files = [
        path / entry["filename"] for entry in json.loads(state_path.read_text())["_data_files"]
    ]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"{path}: state.json lists missing arrow files {missing}")
    return pa.concat_tables([_read_arrow_file(f) for f in files])


READERS: dict[str, Callable[[Path, list[str]], pa.Table | list[dict[str, Any]]]] = {
    "jsonl": _read_jsonl,
    "csv": lambda path, fields: _read_delimited(path, fields, ","),
    "tsv": lambda path, fields: _read_delimited(path, fields, "\t"),
    "parquet": lambda path, fields: pq.read_table(path),
    "hf_disk": _read_hf_disk,
}


def read_corpus(
    path: str | Path,
    *,
    text_field: str = "text",
    text_pair_field: str | None = None,
    label_field: str | None = None,
    id_field: str | None = None,
    split: str | None = None,
) -> Corpus:
    """Read a corpus file or saved HF dataset into records.

    Args:
        path: ``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``, or a ``save_to_disk`` directory
            (a ``DatasetDict`` directory needs ``split``).
        text_field / text_pair_field / label_field / id_field: column names.
        split: the split of a saved ``DatasetDict``.

    Raises:
        ConfigError: missing path, unsupported format, unknown fields (listing the columns
            found), bad or missing texts, duplicate ids, mixed string and numeric labels.
    """
    path = Path(path)
    data_path, format_name, stem = _locate(path, split)
    choices = {
        "text": text_field,
        "text_pair": text_pair_field,
        "label": label_field,
        "id": id_field,
    }
    string_fields = [f for f in (text_field, text_pair_field, id_field) if f]
    data = READERS[format_name](data_path, string_fields)
    if len(data) == 0:
        raise ConfigError(
            f"{path}: no examples (the file is empty or has only a header); give a corpus with "
            "at least one row"
        )
    columns = (
        data.column_names
        if isinstance(data, pa.Table)
        else list(dict.fromkeys(key for row in data for key in row))
    )
    unknown = [
        f"{role}_field {name!r}" for role, name in choices.items() if name and name not in columns
    ]
    if unknown:
        raise ConfigError(f"{path}: unknown {', '.join(unknown)}; columns found: {columns}")
    if isinstance(data, pa.Table):
        data = data.select(sorted({n for n in choices.values() if n})).to_pylist()
    records, label_names = _build_records(data, choices, stem, path)
    fingerprint = _fingerprint(path, {**choices, "split": split})
    return Corpus(records, fingerprint, columns, label_names)


def _locate(path: Path, split: str | None) -> tuple[Path, str, str]:
    """Return (data path, format name, id stem)."""
    if not path.exists():
        raise ConfigError(f"corpus {path} does not exist")
    if path.is_dir():
        return _locate_hf_split(path, split)
    if split is not None:
        raise ConfigError(
            f"split={split!r} applies only to a saved DatasetDict directory, not {path}"
        )
    format_name = path.suffix.lstrip(".").lower()
    if format_name not in READERS or format_name == "hf_disk":
        supported = [f".{name}" for name in READERS if name != "hf_disk"]
        raise ConfigError(
            f"unsupported corpus format {path.suffix!r} ({path}); use one of {supported} "
            "or a directory written by datasets' save_to_disk"
        )
    return path, format_name, path.stem


def _locate_hf_split(path: Path, split: str | None) -> tuple[Path, str, str]:
    dict_file = path / "dataset_dict.json"
    if not dict_file.is_file():
        if split is not None:
            raise ConfigError(
                f"split={split!r} given but {path} is a single dataset, not a DatasetDict"
            )
        return path, "hf_disk", path.name
    splits = json.loads(dict_file.read_text()).get("splits", [])
    if split is None or split not in splits:
        raise ConfigError(f"{path} is a DatasetDict; pass split= one of {splits} (got {split!r})")
    return path / split, "hf_disk", f"{path.name}.{split}"


def _build_records(
    rows: list[dict[str, Any]], choices: dict[str, str | None], stem: str, path: Path
) -> tuple[list[Record], list[str] | None]:
    problems: list[str] = []
    texts = [_text(v, i, problems) for i, v in enumerate(_column(rows, choices["text"]))]
    pairs = _column(rows, choices["text_pair"])
    problems += [
        f"row {i}: text_pair must be a string, got {pair!r}"
        for i, pair in enumerate(pairs)
        if choices["text_pair"] and not isinstance(pair, str)
    ]
    raw_labels = _column(rows, choices["label"])
    if choices["label"]:
        problems += [
            f"row {i}: no value in label_field {choices['label']!r}; fill it in or drop the row"
            for i, label in enumerate(raw_labels)
            if label is None or label == ""
        ]
    labels, label_names = _map_labels(raw_labels, problems)
    ids = [
        str(value) if choices["id"] else _derived_id(stem, i, texts[i], pairs[i])
        for i, value in enumerate(_column(rows, choices["id"]))
    ]
    duplicates = [example_id for example_id, count in Counter(ids).items() if count > 1]
    if duplicates:
        problems.append(f"duplicate example id {duplicates[0]!r} in id_field {choices['id']!r}")
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if isinstance(label, list) and isinstance(text, list) and len(label) != len(text):
            problems.append(f"row {i}: {len(text)} words but {len(label)} labels")
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems[:20]])
    records = [Record(*values) for values in zip(ids, texts, pairs, labels, strict=True)]
    return records, label_names


def _column(rows: list[dict[str, Any]], name: str | None) -> list[Any]:
    return [row.get(name) for row in rows] if name else [None] * len(rows)


def _text(value: Any, row: int, problems: list[str]) -> str | list[str]:
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(w, str) for w in value)
    ):
        return value
    problems.append(f"row {row}: text must be a string or a list of words, got {value!r}")
    return ""


def _map_labels(raw: list[Any], problems: list[str]) -> tuple[list[Label], list[str] | None]:
    """String labels -> indices into their sorted set; numbers kept (bools as ints)."""
    flat = [v for label in raw for v in (label if isinstance(label, list) else [label])]
    strings = {v for v in flat if isinstance(v, str)}
    numbers = [v for v in flat if isinstance(v, int | float)]
    others = [v for v in flat if v is not None and not isinstance(v, str | int | float)]
    if strings and numbers:
        problems.append(
            f"labels mix strings and numbers, e.g. {sorted(strings)[0]!r} and {numbers[0]!r}"
        )
    if others:
        problems.append(f"labels must be strings, numbers or lists of them, got {others[0]!r}")
    if (strings and numbers) or others:
        return list(raw), None  # reported above; read_corpus raises
    if not strings:
        return [_numeric_label(label) for label in raw], None
    names = sorted(strings)
    index = {name: i for i, name in enumerate(names)}
    mapped: list[Label] = [
        [index[v] for v in x] if isinstance(x, list) else None if x is None else index[x]
        for x in raw
    ]
    return mapped, names


def _numeric_label(label: Any) -> Label:
    if isinstance(label, list):
        return [int(v) for v in label]
    return int(label) if isinstance(label, bool) else label


def _derived_id(stem: str, row: int, text: str | list[str], pair: str | None) -> str:
    content = " ".join(text) if isinstance(text, list) else text
    if pair is not None:
        content = f"{content}\n{pair}"
    return f"{stem}:{row}:{hashlib.sha1(content.encode('utf-8')).hexdigest()[:8]}"


def _fingerprint(path: Path, choices: dict[str, str | None]) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        update_with_file(digest, file)
    digest.update(json.dumps(choices, sort_keys=True).encode())
    return digest.hexdigest()
