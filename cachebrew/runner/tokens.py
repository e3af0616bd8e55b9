"""What the student reads: its tokenizer, and its own tokens when they differ from the teacher's.

**Tokenizer.** The student's tokenizer is ``tokenizer:`` if given, else the ``tokenizer.json``
of a student HF directory, else the teacher's (the directory the manifest names as the
teacher's source, if its ``tokenizer.json`` still has the cached hash). When its hash equals
the cache's ``tokenizer_hash`` (or none is found), the student reads the teacher's input ids
stored in the cache. Otherwise ``data:`` must name the corpus the cache was built from; it is
re-tokenized with the student's tokenizer and joined to the cache by example id
(different-batch mode: ``batch['student']`` and ``batch['teacher']`` differ).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachebrew import models
from cachebrew.cache.read.reader import CacheReader
from cachebrew.corpus import read_corpus, tokenize_records
from cachebrew.errors import ConfigError
from cachebrew.files import sha256_file
from cachebrew.runner.config import DataConfig, DistillRunConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128


@dataclass
class StudentTokens:
    """How the student's inputs are made.

    Attributes:
        tokenizer: the student's tokenizer, or None (cache ids; default special ids).
        source: where it came from (for the run plan).
        other: True when it differs from the cache's tokenizer (different-batch mode).
        items: example id -> tokenized student item, in different-batch mode; else None.
    """

    tokenizer: Any = None
    source: str = "cache input ids"
    other: bool = False
    items: dict[str, dict[str, Any]] | None = None

    def dataset_kwargs(self) -> dict[str, Any]:
        """``pad_id`` / ``sep_id`` / ``with_token_type_ids`` / ``student_items`` for CacheDataset."""
        tok = self.tokenizer
        pad_id = getattr(tok, "pad_token_id", None)
        sep_id = getattr(tok, "sep_token_id", None)
        with_types = tok is not None and "token_type_ids" in getattr(tok, "model_input_names", [])
        return {
            "pad_id": 0 if pad_id is None else int(pad_id),
            "sep_id": sep_id,
            "with_token_type_ids": bool(with_types and sep_id is not None),
            "student_items": self.items,
        }


def _tokenizer_json(path: str | Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    candidate = path / "tokenizer.json" if path.is_dir() else path
    return candidate if candidate.is_file() and candidate.name.endswith(".json") else None


def _find_tokenizer(cfg: DistillRunConfig, reader: CacheReader) -> tuple[Path | None, str]:
    """The student's tokenizer.json and a description of where it was found."""
    if cfg.tokenizer is not None:
        found = _tokenizer_json(cfg.tokenizer)
        if found is None:
            raise ConfigError(f"tokenizer: no tokenizer.json at {cfg.tokenizer!r}")
        return found, f"tokenizer: {cfg.tokenizer}"
    student_json = _tokenizer_json(cfg.student) if Path(cfg.student).is_dir() else None
    if student_json is not None:
        return student_json, f"the student's {student_json}"
    cached_hash = reader.manifest.get("tokenizer_hash")
    teacher_json = _tokenizer_json(reader.manifest["teacher"].get("source"))
    if teacher_json is not None and sha256_file(teacher_json) == cached_hash:
        return teacher_json, f"the teacher's {teacher_json}"
    return None, "cache input ids (no tokenizer found: pad id 0, no token type ids)"


def resolve_student_tokens(cfg: DistillRunConfig, reader: CacheReader) -> StudentTokens:
    """Find the student's tokenizer; re-tokenize ``data:`` when it is not the cache's.

    Raises:
        ConfigError: an unreadable ``tokenizer:``, or another tokenizer without ``data:``.
    """
    path, source = _find_tokenizer(cfg, reader)
    if path is None:
        return StudentTokens(source=source)
    tokenizer = models.load_tokenizer(path)
    other = sha256_file(path) != reader.manifest.get("tokenizer_hash")
    if not other:
        if cfg.data is not None:
            logger.info("data: ignored, the student shares the cache's tokenizer")
        return StudentTokens(tokenizer, source)
    if cfg.data is None:
        raise ConfigError(
            f"student tokenizer ({source}) differs from the one the cache was built with; "
            "give data: (the corpus given to precompute) to re-tokenize it for the student"
        )
    items = student_items(cfg.data, tokenizer, max_length(reader))
    return StudentTokens(tokenizer, source, True, items)


def max_length(reader: CacheReader) -> int:
    """The truncation length the cache was built with."""
    return int((reader.manifest.get("extra") or {}).get("max_length", DEFAULT_MAX_LENGTH))


def student_items(data: DataConfig, tokenizer: Any, length: int) -> dict[str, dict[str, Any]]:
    """``example_id -> tokenized item`` for the corpus at ``data.path``."""
    records = list(read_corpus(data.path, **data.corpus_fields()))
    words = bool(records) and isinstance(records[0].text, list)
    items = tokenize_records(records, tokenizer, length, is_split_into_words=words)
    return {r.example_id: item for r, item in zip(records, items, strict=True)}
