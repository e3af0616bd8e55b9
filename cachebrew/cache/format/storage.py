"""Filesystem helpers: local paths and fsspec URLs, atomic JSON, shard publishing, Zarr stores.

Durability: on a local filesystem every publish goes through :mod:`cachebrew.files` -- the
bytes are fsynced before the rename that publishes them (a shard's chunks and ``index.arrow``,
the manifest, the markers) and the directories after it, so a power cut leaves the previous
state or the new one. fsspec has no fsync: on other filesystems (object stores) a write is as
durable as the store makes it when the call returns, and ordering is kept instead (a shard's
``index.arrow`` is moved last, the manifest is written after every shard).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cachebrew.errors import CacheError
from cachebrew.files import fsync_path, make_dirs_durable
from cachebrew.files import publish_dir as publish_local_dir

MANIFEST = "manifest.json"
RUN_RECORD = "_run.json"
SHARDS = "shards"
STAGING = "_staging"
DONE = "_done"
INDEX = "index.arrow"


class CacheLocation:
    """A cache root on some filesystem: ``fs`` (fsspec) + ``root`` (path inside it).

    Args:
        path: a local path or an fsspec URL (``file://``, ``memory://``, ``s3://`` ...).
        storage_options: passed to fsspec (and to Zarr's FsspecStore).
    """

    def __init__(self, path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        self.path = os.fspath(path)
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(self.path, **self.storage_options)
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def join(self, *parts: str) -> str:
        """Path of ``parts`` under the root."""
        return "/".join([self.root.rstrip("/"), *parts])

    def shard_path(self, shard: int) -> str:
        """Published path of shard ``shard``."""
        return self.join(SHARDS, shard_name(shard))

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def read_json(self, path: str) -> dict[str, Any] | None:
        """Parse a JSON file, or None if it does not exist."""
        try:
            with self.fs.open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CacheError(f"cannot read {path}: {e}") from e
        if not isinstance(data, dict):
            raise CacheError(f"{path} does not hold a JSON object")
        return data

    def write_json_atomic(self, path: str, data: dict[str, Any]) -> None:
        """Write JSON to a temporary name, then rename it to ``path`` (atomic on local disks,
        and durable there: the file is fsynced before the rename, its directory after)."""
        payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        try:
            if self.is_local:
                make_dirs_durable(os.path.dirname(path) or ".")
                with open(tmp, "wb") as f:
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                fsync_path(os.path.dirname(path) or ".")
            else:
                self.fs.pipe_file(tmp, payload)
                self.fs.mv(tmp, path)
        except OSError as e:
            # A full disk or a permission: no half-written temporary file stays behind.
            self._discard_quietly(tmp)
            raise CacheError(
                f"could not write {path}: {e.strerror or e}; free space or fix permissions, "
                "then rerun (finished shards are kept)"
            ) from e

    def _discard_quietly(self, path: str) -> None:
        try:
            self.remove(path)
        except OSError:
            pass

    def publish_dir(self, src: str, dst: str, last: str = INDEX) -> None:
        """Move a finished directory into place.

        Local: :func:`cachebrew.files.publish_dir` (every file fsynced, one ``os.rename``, the
        directories fsynced). Elsewhere (object stores have no directory rename):
        every file except ``last`` first, then ``last``, so ``dst/last`` existing means the move
        is complete. An incomplete ``dst`` left by a killed publish is removed first.

        Raises:
            CacheError: a local ``dst`` exists. A local rename is atomic, so an existing ``dst``
                is no leftover of ours: it is never replaced (it may be a user's folder).
        """
        if self.is_local:
            try:
                publish_local_dir(src, dst)
            except FileExistsError:
                raise CacheError(
                    f"{dst} already exists and is not a shard this run published; refusing to "
                    "replace it: move it out of the cache directory"
                ) from None
            return
        self.remove(dst)
        files = sorted(self.fs.find(src))
        tail = [f for f in files if f == f"{src}/{last}"]
        for f in [f for f in files if f not in tail] + tail:
            self.fs.mv(f, dst + f[len(src) :])
        self.remove(src)

    def remove(self, path: str) -> None:
        """Delete a file or directory tree if it exists."""
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def listdir(self, path: str) -> list[str]:
        """Base names of the entries of a directory ([] if missing)."""
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def size(self, path: str) -> int:
        """Total bytes under a file or directory."""
        return int(self.fs.du(path, total=True)) if self.fs.exists(path) else 0

    def read_bytes(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(path))

    def write_bytes(self, path: str, data: bytes) -> None:
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self.fs.pipe_file(path, data)

    def zarr_store(self, path: str, *, read_only: bool) -> Any:
        """A Zarr v3 store rooted at ``path``: LocalStore on disk, FsspecStore elsewhere."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(path, read_only=read_only)
        url = self.fs.unstrip_protocol(path)
        return FsspecStore.from_url(url, storage_options=self.storage_options, read_only=read_only)


def shard_name(shard: int) -> str:
    """Directory name of a shard: five digits, zero-padded."""
    return f"{shard:05d}"


def done_marker_name(rank: int, world_size: int) -> str:
    """File name of the per-rank completion marker."""
    return f"rank-{rank:05d}-of-{world_size:05d}.json"
