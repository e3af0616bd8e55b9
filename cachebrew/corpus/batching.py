"""Records -> model inputs: tokenize (with word-label alignment), bucket by length, pad.

Labels the loss must skip (special tokens, later sub-tokens of a word, padding) are
``IGNORE_INDEX`` (-100), as in HF token classification.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from cachebrew.corpus.reading import Record
from cachebrew.errors import ConfigError

# pad value per key for pad_batch; input_ids get the tokenizer's pad id
PAD_VALUES: dict[str, int] = {"attention_mask": 0, "token_type_ids": 0, "labels": -100}
IGNORE_INDEX = -100


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
