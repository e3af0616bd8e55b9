"""Record the file-system calls of a save and replay what a power cut would leave.

:class:`Recorder` wraps ``os.fsync``, ``os.rename``, ``os.replace``, the directory exchange of
:mod:`cachebrew.files` and the unlink calls. Writes are seen as file contents that changed
between two recorded calls (third-party writers -- Zarr, safetensors, torch -- write from C,
Rust or threads, so their ``write`` calls cannot all be wrapped). At every recorded call it
takes a *crash view* of the watched directory: the names as they are at that moment (a rename
or create that has happened reached the disk) with each file's bytes as they were at its last
fsync, or empty if it was never fsynced -- what a filesystem that delays data but not
metadata (ext4 ``data=writeback``, ``delalloc``) may show after a power cut. The view after
a given call is the prefix of the recorded sequence up to that call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cachebrew import files


@dataclass
class Event:
    """One recorded call: ``kind`` is fsync, rename or exchange; paths are absolute."""

    kind: str
    path: str
    target: str = ""
    # For renames: relative file -> whether its current bytes equal its fsynced bytes.
    durable: dict[str, bool] = field(default_factory=dict)


def _key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class Recorder:
    """Wraps the os calls (see the module docstring) while ``recording()`` is active."""

    def __init__(self, root: Path):
        self.root = root
        self.events: list[Event] = []
        self.views: list[dict[str, bytes | None]] = []  # relative path -> bytes (None: dir)
        self.synced: dict[tuple[int, int], bytes] = {}
        self.lock = threading.RLock()
        self.real: dict[str, Any] = {}

    # ------------------------------------------------------------------------ views

    def crash_view(self) -> dict[str, bytes | None]:
        """The watched tree as a power cut now would leave it (module docstring)."""
        view: dict[str, bytes | None] = {}
        if not self.root.exists():
            return view
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames:
                view[os.path.relpath(os.path.join(dirpath, name), self.root)] = None
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                view[os.path.relpath(path, self.root)] = self.synced.get(_key(st), b"")
        return view

    def _durability_of(self, src: str) -> dict[str, bool]:
        out = {}
        for dirpath, _dirs, filenames in os.walk(src) if os.path.isdir(src) else ():
            for name in filenames:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as handle:
                    current = handle.read()
                synced = self.synced.get(_key(os.lstat(path)))
                out[os.path.relpath(path, src)] = synced == current
        if os.path.isfile(src):
            with open(src, "rb") as handle:
                out["."] = self.synced.get(_key(os.lstat(src))) == handle.read()
        return out

    # ------------------------------------------------------------------------ wrappers

    def _fsync(self, fd: int) -> None:
        with self.lock:
            self.real["fsync"](fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
            if os.path.isfile(path):
                with open(f"/proc/self/fd/{fd}", "rb") as handle:
                    self.synced[_key(st)] = handle.read()
            self.events.append(Event("fsync", path))
            self.views.append(self.crash_view())

    def _move(self, kind: str, src: Any, dst: Any, call: Any) -> Any:
        with self.lock:
            src, dst = os.path.abspath(src), os.path.abspath(dst)
            self.events.append(Event(kind, src, dst, self._durability_of(src)))
            result = call()
            self.views.append(self.crash_view())
            return result

    def _unlink(self, name: str, path: Any, *args: Any, dir_fd: int | None = None) -> Any:
        with self.lock:
            try:
                st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
                self.synced.pop(_key(st), None)  # its inode may be reused by a new file
            except OSError:
                pass
            return self.real[name](path, *args, dir_fd=dir_fd)

    @contextmanager
    def recording(self) -> Iterator[Recorder]:
        monkeypatch = pytest.MonkeyPatch()
        for name in ("fsync", "rename", "replace", "unlink", "remove"):
            self.real[name] = getattr(os, name)
        monkeypatch.setattr(os, "fsync", self._fsync)
        for name in ("rename", "replace"):
            real = self.real[name]
            monkeypatch.setattr(
                os,
                name,
                lambda s, d, *a, _r=real, _n=name, **k: self._move(
                    _n, s, d, lambda: _r(s, d, *a, **k)
                ),
            )
        if hasattr(files, "_exchange"):
            self.real["exchange"] = files._exchange
            monkeypatch.setattr(
                files,
                "_exchange",
                lambda a, b: self._move("exchange", a, b, lambda: self.real["exchange"](a, b)),
            )
        for name in ("unlink", "remove"):
            monkeypatch.setattr(os, name, lambda p, *a, _n=name, **k: self._unlink(_n, p, *a, **k))
        self.views.append(self.crash_view())
        try:
            yield self
        finally:
            monkeypatch.undo()
        self.views.append(self.crash_view())

    # ------------------------------------------------------------------------ checks

    def publishing_renames(self) -> list[tuple[int, Event]]:
        """Renames whose destination is a published name (not inside a temporary directory)."""

        def temporary(path: str) -> bool:
            parts = (
                Path(path).relative_to(self.root).parts if path.startswith(str(self.root)) else ()
            )
            return any(p.startswith((".tmp", "_staging", ".old-")) for p in parts[:-1])

        return [
            (i, e)
            for i, e in enumerate(self.events)
            if e.kind in ("rename", "replace", "exchange") and not temporary(e.target)
        ]


def materialise(view: dict[str, bytes | None], out: Path) -> Path:
    """Write a crash view as a real directory tree."""
    out.mkdir(parents=True)
    for rel, data in sorted(view.items()):
        if data is None:
            (out / rel).mkdir(parents=True, exist_ok=True)
    for rel, data in view.items():
        if data is not None:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``root``."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
