"""Helpers of the fault suite: what a CLI call did, precompute arguments, file snapshots."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FEATURES = "logits,hidden:0,2,attention:1"


@dataclass
class Outcome:
    """What one CLI call did."""

    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The stderr lines that are not log records (``INFO``/``WARNING`` ...)."""
        lines = [line for line in self.err.splitlines() if line.startswith("error:")]
        return "\n".join(lines)


def precompute_args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """``cachebrew precompute`` arguments for the tiny teacher (3 shards of 16)."""
    return [
        "precompute",
        "--teacher", str(teacher), "--data", str(data), "--out", str(out),
        "--features", FEATURES, "--shard-size", "16", "--quiet", *extra,
    ]  # fmt: skip


def snapshot(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` by relative path (symlinks not followed)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size_kib: int) -> Iterator[Path]:
    """A real tmpfs of ``size_kib`` KiB at ``mount_point`` (a full disk), or skip the test where
    this user cannot mount one; unmounted afterwards (lazily if a file is still open)."""
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        gc.collect()  # a failed torch.save may hold its file open until collected
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
