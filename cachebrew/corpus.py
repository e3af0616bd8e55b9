"""Read corpora into records with stable example ids; tokenize, bucket and pad them.

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
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cachebrew.errors import ConfigError
from cachebrew.files import utf8_lines

Label = int | float | list[int] | None
# pad value per key for pad_batch; input_ids get the tokenizer's pad id
PAD_VALUES: dict[str, int] = {"attention_mask": 0, "token_type_ids": 0, "labels": -100}
IGNORE_INDEX = -100


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
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    digest.update(json.dumps(choices, sort_keys=True).encode())
    return digest.hexdigest()


def tokenize_records(
    records: Iterable[Record],
    tokenizer: Any,
    max_length: int,
    *,
    is_split_into_words: bool = False,
    label_all_tokens: bool = False,
) -> list[dict[str, Any]]:
    """Tokenize records (truncated to ``max_length``), one dict of lists per record, same order.

    Items hold ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer gives
    them) and ``labels``: the record's label, or for word labels one label per token (the first
    sub-token of a word gets the word's label, later sub-tokens -100, or the word's label with
    ``label_all_tokens``; special tokens and the pair's tokens get -100).

    Raises:
        ConfigError: word labels without ``is_split_into_words``, text type not matching
            ``is_split_into_words``, string labels, some records with a pair and some without.
    """
    records = list(records)
    if not records:
        return []
    _check_tokenizable(records, is_split_into_words, max_length)
    pairs = [r.text_pair for r in records]
    encoding = tokenizer(
        [r.text for r in records],
        pairs if pairs[0] is not None else None,
        truncation=True,
        max_length=max_length,
        is_split_into_words=is_split_into_words,
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
    items = []
    for i, record in enumerate(records):
        item: dict[str, Any] = {key: list(encoding[key][i]) for key in keys}
        if isinstance(record.label, list):
            item["labels"] = _align_word_labels(
                record.label, encoding.word_ids(i), encoding.sequence_ids(i), label_all_tokens
            )
        elif record.label is not None:
            item["labels"] = record.label
        items.append(item)
    return items


def _check_tokenizable(
    records: Sequence[Record], is_split_into_words: bool, max_length: int
) -> None:
    problems = [] if max_length > 0 else [f"max_length must be positive, got {max_length}"]
    if len({r.text_pair is None for r in records}) > 1:
        problems.append("some records have a text_pair and some do not")
    for r in records:
        if isinstance(r.text, list) != is_split_into_words:
            kind = "a list of words" if isinstance(r.text, list) else "a string"
            problems.append(
                f"{r.example_id}: text is {kind} but is_split_into_words={is_split_into_words}"
            )
        if isinstance(r.label, list) and not is_split_into_words:
            problems.append(
                f"{r.example_id}: word labels need pre-tokenized text (is_split_into_words=True)"
            )
        if isinstance(r.label, str) or (
            isinstance(r.label, list) and any(isinstance(v, str) for v in r.label)
        ):
            problems.append(
                f"{r.example_id}: string label {r.label!r}; read_corpus maps labels to ids"
            )
        if isinstance(r.text, list) and isinstance(r.label, list) and len(r.label) != len(r.text):
            problems.append(f"{r.example_id}: {len(r.text)} words but {len(r.label)} labels")
        if len(problems) >= 20:
            break
    if problems:
        raise ConfigError(problems)


def _align_word_labels(
    word_labels: list[int],
    word_ids: list[int | None],
    sequence_ids: list[int | None],
    label_all_tokens: bool,
) -> list[int]:
    aligned, previous = [], None
    for word, sequence in zip(word_ids, sequence_ids, strict=True):
        if word is None or sequence != 0:
            aligned.append(IGNORE_INDEX)
        elif word != previous or label_all_tokens:
            aligned.append(word_labels[word])
        else:
            aligned.append(IGNORE_INDEX)
        previous = word if sequence == 0 else None
    return aligned


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int | None = None
) -> list[list[int]]:
    """Group indices into batches of similar length to cut padding; every index exactly once.

    Indices are sorted by length and cut into consecutive batches (the last may be short).
    Without a seed, ties keep index order and batches come shortest first. With a seed, ties
    are broken randomly and the batch order is shuffled; the result is a pure function of
    (lengths, batch_size, seed).

    Raises:
        ConfigError: batch_size < 1.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed) if seed is not None else None
    tie_break = [rng.random() for _ in lengths] if rng else list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], tie_break[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if rng:
        rng.shuffle(batches)
    return batches


def pad_batch(
    items: Sequence[dict[str, Any]], pad_id: int, *, pad_values: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a list of ``tokenize_records`` items to the longest one; stack into tensors.

    Args:
        items: dicts of int lists (per token) and scalars (per example, e.g. sequence labels).
        pad_id: the tokenizer's pad id, used for ``input_ids``.
        pad_values: extra or overriding pad values per key (defaults: ``PAD_VALUES``).

    Returns:
        per-token keys as (B, L) tensors, scalar keys as (B,) tensors.

    Raises:
        ConfigError: no items, or a per-token key without a pad value.
    """
    if not items:
        raise ConfigError("pad_batch needs at least one item")
    values = {**PAD_VALUES, "input_ids": pad_id, **(pad_values or {})}
    length = max(len(item["input_ids"]) for item in items)
    batch = {}
    for key in items[0]:
        column = [item[key] for item in items]
        if not isinstance(column[0], list):
            batch[key] = torch.tensor(column)
            continue
        if key not in values:
            raise ConfigError(
                f"no pad value for {key!r}; pass pad_values= (known: {sorted(values)})"
            )
        batch[key] = torch.tensor([seq + [values[key]] * (length - len(seq)) for seq in column])
    return batch
