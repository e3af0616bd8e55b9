"""Local file helpers every stage shares: atomic JSON/text writes and file hashes.

Atomic = written to a hidden temporary name beside the target, flushed to disk, then renamed
over it, so a reader (or a crash) sees the old file or the new one, never half of one. The
cache's writes to fsspec stores go through
:class:`~cachebrew.cache.format.storage.CacheLocation` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cachebrew.errors import ConfigError

_READ_BYTES = 1 << 20


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 2) -> None:
    """``data`` as indented UTF-8 JSON with a trailing newline, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def update_with_file(digest: Any, path: str | Path) -> None:
    """Feed a file's bytes to a ``hashlib`` digest, 1 MiB at a time."""
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_BYTES):
            digest.update(chunk)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return sha256_files([path])


def sha256_files(paths: Iterable[str | Path]) -> str:
    """Hex sha256 of the concatenated bytes of ``paths``, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        update_with_file(digest, path)
    return digest.hexdigest()


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file, numbered from 1.

    Raises:
        ConfigError: a line that is not UTF-8 (names the file, line, byte and the fix), instead
            of the ``UnicodeDecodeError`` a text-mode read would raise mid-file.
    """
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ConfigError(
                    f"{path}:{line_number}: not valid UTF-8 (byte {raw[error.start]:#04x} at "
                    f"column {error.start + 1}); re-save the file as UTF-8"
                ) from None
