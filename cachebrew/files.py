"""Local file helpers every stage shares: durable atomic writes and publishes, file hashes.

Atomic = written to a hidden temporary name beside the target, then renamed over it, so a
reader (or a killed process) sees the old file or the new one, never half of one. Durable =
the bytes are fsynced *before* the rename that publishes them and the directory holding the
new name is fsynced *after* it, so a power cut also leaves the old or the new state: without
the first fsync a filesystem may persist the rename before the data (a published name over
an empty or partial file); without the second the rename itself may be lost. SQLite, LevelDB
and etcd do the same; the ALICE study (Pillai et al., OSDI 2014) found that most systems
skipping it lose data. :func:`publish_dir` is the one way to publish a directory (cache
shards, checkpoints, ``final/``). The cache's writes to fsspec stores go through
:class:`~cachebrew.cache.format.storage.CacheLocation`, which uses these for local paths.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cachebrew.errors import ConfigError

logger = logging.getLogger(__name__)
_READ_BYTES = 1 << 20
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory by path (a directory's fsync makes its entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory under ``root``, children before parents, ``root`` last."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in sorted(filenames):
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def make_dirs_durable(path: str | os.PathLike[str]) -> None:
    """``os.makedirs(path, exist_ok=True)``, fsyncing the parent of every directory it creates."""
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        fsync_path(directory.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` durably: temporary file, fsync, rename, fsync dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 2) -> None:
    """``data`` as indented UTF-8 JSON with a trailing newline, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def publish_dir(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, replace: bool = False
) -> None:
    """Publish the finished directory ``src`` as ``dst``, atomically and durably.

    Every file and directory under ``src`` is fsynced, ``src`` is renamed to ``dst``, then the
    parent directories of both are fsynced. With ``replace=True`` an existing ``dst`` is swapped
    with ``src`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so there is no moment
    without a ``dst``; the old tree is then deleted. Where the exchange is not available the
    old ``dst`` is renamed aside first (logged: a crash in between leaves it under
    ``.old-<name>-*`` beside ``dst``).

    Raises:
        FileExistsError: ``dst`` exists and ``replace`` is false (it is never replaced then:
            it may be a user's folder).
        OSError: from the filesystem (disk full, permissions).
    """
    src, dst = Path(src), Path(dst)
    fsync_tree(src)
    make_dirs_durable(dst.parent)
    old_tree = None
    if not os.path.lexists(dst):
        os.rename(src, dst)
    elif not replace:
        raise FileExistsError(errno.EEXIST, "refusing to replace an existing directory", str(dst))
    else:
        old_tree = _swap_in(src, dst)
    fsync_path(dst.parent)
    if src.parent != dst.parent:
        fsync_path(src.parent)
    if old_tree is not None:  # deleted only once the new tree's name is durable
        shutil.rmtree(old_tree, ignore_errors=True)


def _swap_in(src: Path, dst: Path) -> Path:
    """Put ``src`` at the existing ``dst``; return where the old ``dst`` tree now is."""
    if _exchange(src, dst):
        return src
    old = dst.with_name(f".old-{dst.name}-{uuid.uuid4().hex[:8]}")
    logger.info("no atomic directory exchange here; moving %s aside to %s first", dst, old)
    os.rename(dst, old)
    os.rename(src, dst)
    return old


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where that is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


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
