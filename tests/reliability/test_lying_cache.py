"""A cache that lies is caught: by ``verify``, and on open by ``inspect`` and ``distill``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import Outcome, snapshot

MANIFEST = "manifest.json"


def _edit_manifest(cache: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((cache / MANIFEST).read_text())
    change(manifest)
    (cache / MANIFEST).write_text(json.dumps(manifest))


def _drop_last_shard(m: dict[str, Any]) -> None:
    m["shards"].pop()
    m["totals"]["num_shards"] -= 1
    m["totals"]["num_examples"] = sum(s["num_examples"] for s in m["shards"])


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = m
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value

    return change


MANIFEST_LIES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "total count too high": (_set("totals.num_examples", 300), "totals.num_examples is 300"),
    "total count too low": (_set("totals.num_examples", 10), "totals.num_examples is 10"),
    "shard count wrong": (_set("totals.num_shards", 4), "totals.num_shards is 4"),
    "a shard dropped from the list": (_drop_last_shard, "shards [2] are on disk"),
    "shard count of one entry wrong": (_set("shards.1.num_examples", 99), "listed shards hold"),
    "path with ..": (_set("shards.0.path", "../elsewhere/00000"), "leads outside the cache"),
    "absolute path": (_set("shards.0.path", "/etc"), "leads outside the cache"),
    "url path": (_set("shards.0.path", "file:///etc"), "leads outside the cache"),
    "path to a missing shard": (_set("shards.1.path", "shards/00009"), "does not exist"),
    "entries out of order": (_set("shards.0.index", 2), "shards[0].index is 2"),
    "shards not a list": (_set("shards", {"0": 1}), "shards: expected a list"),
}


@pytest.mark.parametrize("command", ["verify", "inspect"])
@pytest.mark.parametrize("lie", sorted(MANIFEST_LIES))
def test_a_manifest_that_lies_is_refused(
    cli: Callable[..., Outcome], cache_copy: Path, lie: str, command: str
) -> None:
    change, message = MANIFEST_LIES[lie]
    _edit_manifest(cache_copy, change)
    before = snapshot(cache_copy)
    result = cli(command, cache_copy)
    assert result.code == 1, result.out
    assert "manifest.json does not match the cache" in result.error_line
    assert message in result.error_line and "Traceback" not in result.err
    assert snapshot(cache_copy) == before  # reading never changes a cache


def test_distill_refuses_a_cache_whose_totals_lie_before_training(
    cli: Callable[..., Outcome], cache_copy: Path, student_json: Path, tmp_path: Path
) -> None:
    _edit_manifest(cache_copy, _drop_last_shard)
    out = tmp_path / "run"
    args = ["distill", "--cache", cache_copy, "--student", student_json, "--out", out, "--quiet"]
    result = cli(*args, "--set", "num_steps=1")
    assert result.code == 1 and "shards [2] are on disk" in result.error_line
    assert not (out / "metrics.json").exists()


def test_a_shard_symlinked_outside_the_root_is_refused(
    cli: Callable[..., Outcome], cache_copy: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    shutil.move(cache_copy / "shards/00000", outside)
    os.symlink(outside, cache_copy / "shards/00000")
    for command in ("verify", "inspect"):
        result = cli(command, cache_copy)
        assert result.code == 1 and "outside the cache root" in result.error_line
    assert (outside / "index.arrow").exists()


def test_a_symlink_inside_the_root_is_allowed(
    cli: Callable[..., Outcome], cache_copy: Path
) -> None:
    shutil.move(cache_copy / "shards/00000", cache_copy / "moved")
    os.symlink(cache_copy / "moved", cache_copy / "shards/00000")
    result = cli("verify", cache_copy)
    assert result.code == 0, result.err


@pytest.mark.parametrize("array", ["logits", "hidden.0", "hidden.2", "attention.1"])
def test_a_corrupt_zarr_json_is_reported_against_its_own_array(
    cli: Callable[..., Outcome], cache_copy: Path, array: str
) -> None:
    (cache_copy / "shards/00001" / array / "zarr.json").write_text("{not json")
    result = cli("verify", cache_copy)
    assert result.code == 1
    assert f"shard 1, array {array!r}" in result.out
    others = {"logits", "hidden.0", "hidden.2", "attention.1"} - {array}
    assert not any(f"array {o!r}" in result.out for o in others)


@pytest.mark.parametrize("array", ["logits", "hidden.2", "attention.1"])
def test_a_flipped_chunk_byte_names_shard_array_and_ids(
    cli: Callable[..., Outcome],
    cache_copy: Path,
    flip_chunk_byte: Callable[[Path, int, str], None],
    array: str,
) -> None:
    flip_chunk_byte(cache_copy, 2, array)
    result = cli("verify", cache_copy)
    assert result.code == 1
    assert f"shard 2, array {array!r}" in result.out and "examples affected" in result.out


def _rewrite_index(cache: Path, change: Callable[[Any, dict[str, Any]], Any]) -> None:
    """Rewrite shard 0's index through ``change(table, meta)`` and re-sign it in the manifest,
    as a crafted cache would: only the cross-checks between index and arrays can catch it."""
    from cachebrew.cache.format.codecs import bytes_checksum
    from cachebrew.cache.format.index import parse_index, serialize_index

    path = cache / "shards/00000/index.arrow"
    table, meta = parse_index(path.read_bytes(), str(path))
    table = change(table, meta)
    raw = serialize_index(table, meta)
    path.write_bytes(raw)
    _edit_manifest(cache, _set("shards.0.index_sha256", bytes_checksum(raw)))


def _shift_offsets(table: Any, meta: dict[str, Any]) -> Any:
    import pyarrow as pa

    column = table.column("hidden.2.offset").to_numpy() + 1
    position = table.column_names.index("hidden.2.offset")
    return table.set_column(position, "hidden.2.offset", pa.array(column))


def _claim_more_rows(table: Any, meta: dict[str, Any]) -> Any:
    meta["arrays"]["logits"]["rows"] += 5
    return table


def _drop_rows(table: Any, meta: dict[str, Any]) -> Any:
    return table.slice(0, 10)


def _escape_name(table: Any, meta: dict[str, Any]) -> Any:
    meta["arrays"]["../../etc"] = meta["arrays"].pop("attention.1")
    return table


INDEX_LIES = {
    "offsets shifted": (_shift_offsets, "do not tile the array"),
    "array rows claimed": (_claim_more_rows, "index covers"),
    "rows dropped from the index": (_drop_rows, "index has 10 rows"),
    "array name escaping the shard": (_escape_name, "is not a plain name"),
}


@pytest.mark.parametrize("lie", sorted(INDEX_LIES))
def test_an_index_that_disagrees_with_its_arrays_fails_verify(
    cli: Callable[..., Outcome], cache_copy: Path, lie: str
) -> None:
    change, message = INDEX_LIES[lie]
    _rewrite_index(cache_copy, change)
    result = cli("verify", cache_copy)
    assert result.code == 1 and "CORRUPT shard 0" in result.out and message in result.out


def test_an_index_edited_without_resigning_fails_its_checksum(
    cli: Callable[..., Outcome], cache_copy: Path
) -> None:
    path = cache_copy / "shards/00001/index.arrow"
    path.write_bytes(path.read_bytes()[:-7])
    result = cli("verify", cache_copy)
    assert result.code == 1 and "does not match the sha256 in the manifest" in result.out


def test_an_unfinished_cache_is_not_a_cache(cli: Callable[..., Outcome], cache_copy: Path) -> None:
    (cache_copy / MANIFEST).unlink()
    result = cli("inspect", cache_copy)
    assert result.code == 1 and "not a complete cache" in result.error_line
    assert "3 finished shards" in result.error_line


def test_a_manifest_that_is_not_json_is_one_line(
    cli: Callable[..., Outcome], cache_copy: Path
) -> None:
    (cache_copy / MANIFEST).write_text('{"format_version": 1,')
    result = cli("inspect", cache_copy)
    assert result.code == 1 and "cannot read" in result.error_line and "Traceback" not in result.err
