"""What in a cache directory cachebrew wrote, and the lock a writer holds on it.

DESIGN §7: cachebrew never removes or overwrites a file it did not write. Whether a directory
is a cache is decided from cachebrew's own markers (``manifest.json`` or ``_run.json``), and
every entry is matched against the names cachebrew gives its files, before anything is removed.
A directory name such as ``shards/`` proves nothing: a user may have one of their own.

:class:`WriterLock` is the exclusive lock a precompute holds on its output for the whole run:
an ``flock`` on ``.cachebrew.lock`` (released by the kernel when the process dies, so a SIGKILL
never leaves a stale lock). Object stores have no such lock; there it is a no-op (logged).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from types import TracebackType
from typing import IO, Any

from cachebrew.cache.format.lm_head import HEAD_FILE
from cachebrew.cache.format.storage import (
    DONE,
    INDEX,
    MANIFEST,
    RUN_RECORD,
    SHARDS,
    STAGING,
    CacheLocation,
)
from cachebrew.errors import CacheError

logger = logging.getLogger(__name__)

LOCK = ".cachebrew.lock"
_LOCK = re.compile(r"^\.cachebrew(?:-rank-\d{5})?\.lock$")
_TMP = r"\.tmp-[0-9a-f]{8}"
_OWN_FILES = "|".join(re.escape(name) for name in (MANIFEST, RUN_RECORD, HEAD_FILE))
_TOP = re.compile(rf"^(?:{_OWN_FILES})(?:{_TMP})?$")
_SHARD = re.compile(r"^\d{5}$")
_STAGED = re.compile(r"^\d{5}\.[0-9a-f]{8}$")
_MARKER = re.compile(rf"^rank-\d{{5}}-of-\d{{5}}\.json(?:{_TMP})?$")
_POLL_SECONDS = 0.2


class CacheLockedError(CacheError):
    """Another process holds the writer lock of a cache (names its pid and host)."""


def is_cache(loc: CacheLocation) -> bool:
    """Whether ``loc`` carries cachebrew's own markers (a manifest or a run record)."""
    return loc.exists(loc.join(MANIFEST)) or loc.exists(loc.join(RUN_RECORD))


def foreign_entries(loc: CacheLocation) -> list[str]:
    """Paths (relative to the root) of entries cachebrew would not have written there."""
    foreign = []
    for name in loc.listdir(loc.root):
        if name in (SHARDS, STAGING, DONE) and loc.fs.isdir(loc.join(name)):
            foreign += [f"{name}/{n}" for n in _foreign_in(loc, name)]
        elif not _LOCK.match(name) and not _TOP.match(name):
            foreign.append(name)
    return foreign


def _foreign_in(loc: CacheLocation, folder: str) -> list[str]:
    pattern = {SHARDS: _SHARD, STAGING: _STAGED, DONE: _MARKER}[folder]
    foreign = []
    for name in loc.listdir(loc.join(folder)):
        if not pattern.match(name):
            foreign.append(name)
        elif folder == SHARDS:
            foreign += [f"{name}/{n}" for n in _foreign_in_shard(loc, loc.join(SHARDS, name))]
    return foreign


def _foreign_in_shard(loc: CacheLocation, shard: str) -> list[str]:
    """A shard holds ``zarr.json``, ``index.arrow`` and Zarr arrays (folders with a zarr.json)."""
    if not loc.fs.isdir(shard):
        return ["(a file, not a shard folder)"]
    return [
        name
        for name in loc.listdir(shard)
        if name not in ("zarr.json", INDEX) and not loc.exists(f"{shard}/{name}/zarr.json")
    ]


def check_owned(loc: CacheLocation, action: str) -> None:
    """Refuse, before anything is touched, an output that is not wholly cachebrew's.

    Args:
        loc: the output root.
        action: what would happen next (``write a cache``, ``remove the cache``), for the message.

    Raises:
        CacheError: ``loc`` is a file; or not empty and without cachebrew's markers; or a cache
            holding entries cachebrew did not write (they are named, nothing is removed).
    """
    if loc.exists(loc.root) and not loc.fs.isdir(loc.root):
        raise CacheError(f"{loc.path} is a file, not a directory; refusing to {action} there")
    entries = [n for n in loc.listdir(loc.root) if not _LOCK.match(n)]
    if not entries:
        return
    # Another rank of the same run may be mid-way through writing the run record: its
    # temporary name is cachebrew's own, so the folder is already a cache being started.
    starting = all(_TOP.match(name) for name in entries)
    if not is_cache(loc) and not starting:
        raise CacheError(
            f"{loc.path} is not empty and is not a cachebrew cache (no {MANIFEST} or "
            f"{RUN_RECORD}; found {entries[:5]}); refusing to {action} there: choose an empty "
            "or new directory"
        )
    foreign = foreign_entries(loc)
    if foreign:
        raise CacheError(
            f"{loc.path} holds files cachebrew did not write: {foreign[:5]}; refusing to "
            f"{action} there: move them out of the cache directory first"
        )


def remove_owned(loc: CacheLocation) -> None:
    """Remove a cache's own entries, manifest first (it never looks complete half-removed).

    The caller has run :func:`check_owned`; the lock file stays (its holder is the caller).
    """
    for name in [n for n in loc.listdir(loc.root) if _TOP.match(n)]:
        if name.startswith(MANIFEST):
            loc.remove(loc.join(name))
    for folder in (SHARDS, STAGING, DONE):
        for name in loc.listdir(loc.join(folder)):
            loc.remove(loc.join(folder, name))
        loc.remove(loc.join(folder))
    for name in [n for n in loc.listdir(loc.root) if _TOP.match(n)]:
        loc.remove(loc.join(name))


def lock_name(rank: int, world_size: int) -> str:
    """The lock file of one writer: ranks of a multi-process run each lock their own shards."""
    return LOCK if world_size == 1 else f".cachebrew-rank-{rank:05d}.lock"


class WriterLock:
    """An exclusive lock on a cache root for the whole of one writer's run.

    Args:
        loc: the cache root (created if missing: the lock file lives in it).
        wait_seconds: how long to wait for another holder; 0 refuses at once, ``inf`` waits.
        name: the lock file's name (:func:`lock_name`).

    Raises (on enter):
        CacheLockedError: another process holds the lock (names its pid, host and start time).
    """

    def __init__(self, loc: CacheLocation, wait_seconds: float = 0.0, name: str = LOCK):
        self.loc, self.wait_seconds, self.name = loc, wait_seconds, name
        self._handle: IO[str] | None = None

    def __enter__(self) -> WriterLock:
        if not self.loc.is_local:
            logger.info("%s: no writer lock on object stores; run one writer only", self.loc.path)
            return self
        os.makedirs(self.loc.root, exist_ok=True)
        deadline = time.monotonic() + self.wait_seconds
        announced = False
        while (handle := self._try_lock()) is None:
            holder = _describe_holder(self.loc.join(self.name))
            if time.monotonic() >= deadline:
                raise CacheLockedError(
                    f"{self.loc.path} is being written by another cachebrew ({holder}); wait for "
                    "it to finish, pass --wait to queue behind it, or choose another --out"
                )
            if not announced:
                logger.warning("%s is locked by %s; waiting", self.loc.path, holder)
                announced = True
            time.sleep(_POLL_SECONDS)
        self._handle = handle
        handle.seek(0)
        handle.truncate()
        holder_info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        handle.write(json.dumps(holder_info))
        handle.flush()
        return self

    def _try_lock(self) -> IO[str] | None:
        import fcntl

        path = self.loc.join(self.name)
        while True:
            handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the run)
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return None
            # The previous holder may have unlinked the file between our open and flock: then
            # we would hold a lock on a dead inode while a third process locks a new file.
            try:
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    return handle
            except FileNotFoundError:
                pass
            handle.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is None:
            return
        # Unlink while still holding the lock, so no one else can be inside the same inode.
        try:
            os.unlink(self.loc.join(self.name))
        except FileNotFoundError:
            pass
        self._handle.close()
        self._handle = None


def _describe_holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            info: dict[str, Any] = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder not yet recorded"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("since", 0))))
    return f"pid {info.get('pid')} on host {info.get('host')}, since {since}"
