"""cachebrew.files: the one durable way to publish a directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachebrew import files


def make_tree(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(text)
    (root / "sub" / "b.txt").write_text(text * 2)
    return root


def test_publish_dir_fsyncs_the_tree_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1],
    )
    monkeypatch.setattr(
        os, "rename", lambda a, b: (calls.append(("rename", str(b))), real_rename(a, b))[1]
    )
    src = make_tree(tmp_path / ".tmp-x", "new")
    files.publish_dir(src, tmp_path / "out" / "final")
    rename = calls.index(("rename", str(tmp_path / "out" / "final")))
    synced_before = {path for kind, path in calls[:rename] if kind == "fsync"}
    assert {
        str(src / "a.txt"),
        str(src / "sub" / "b.txt"),
        str(src / "sub"),
        str(src),
    } <= synced_before
    assert str(tmp_path) in synced_before  # out/ was created: its entry in tmp_path is durable
    assert ("fsync", str(tmp_path / "out")) in calls[rename + 1 :]


def test_replacing_never_leaves_a_moment_without_the_directory(tmp_path, monkeypatch):
    final = make_tree(tmp_path / "final", "old")
    seen: list[str] = []
    real_exchange = files._exchange

    def exchange(a: Path, b: Path) -> bool:
        done = real_exchange(a, b)
        seen.append((final / "a.txt").read_text())  # right after the swap
        return done

    monkeypatch.setattr(files, "_exchange", exchange)
    files.publish_dir(make_tree(tmp_path / ".tmp-new", "new"), final, replace=True)
    assert seen == ["new"]
    assert (final / "a.txt").read_text() == "new" and (
        final / "sub" / "b.txt"
    ).read_text() == "newnew"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # the old tree is gone


def test_without_an_exchange_the_old_tree_moves_aside_first(tmp_path, monkeypatch):
    final = make_tree(tmp_path / "final", "old")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    files.publish_dir(make_tree(tmp_path / ".tmp-new", "new"), final, replace=True)
    assert (final / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_an_existing_directory_is_not_replaced_unless_asked(tmp_path):
    final = make_tree(tmp_path / "final", "user's")
    with pytest.raises(FileExistsError):
        files.publish_dir(make_tree(tmp_path / ".tmp-new", "new"), final)
    assert (final / "a.txt").read_text() == "user's"
