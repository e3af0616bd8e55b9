"""Helpers of the fault suite: what a CLI call did, precompute arguments, file snapshots."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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
