"""Corpora: read them into records with stable example ids; tokenize, bucket and pad them.

:mod:`~cachebrew.corpus.reading` reads files and saved datasets into a :class:`Corpus` of
:class:`Record` (formats, id derivation, fingerprint); :mod:`~cachebrew.corpus.batching` turns
records into padded model inputs. Every public name is importable from ``cachebrew.corpus``.
"""

from __future__ import annotations

from cachebrew.corpus.batching import (
    IGNORE_INDEX,
    PAD_VALUES,
    length_bucketed_batches,
    pad_batch,
    tokenize_records,
)
from cachebrew.corpus.fields import CorpusFields
from cachebrew.corpus.reading import READERS, Corpus, Label, Record, read_corpus

__all__ = [
    "CorpusFields",
    "IGNORE_INDEX",
    "PAD_VALUES",
    "READERS",
    "Corpus",
    "Label",
    "Record",
    "length_bucketed_batches",
    "pad_batch",
    "read_corpus",
    "tokenize_records",
]
