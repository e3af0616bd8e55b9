"""A complete cache and a new run are compared by content: the teacher's path spelling is not
part of its identity; every other field that differs is named."""

from __future__ import annotations

from typing import Any

from cachebrew.cache.format.manifest import rerun_differences, run_differences

TEACHER = {"class": "Bert", "kind": "sequence_classification", "config_sha256": "c",
           "weights_sha256": "w", "tokenizer_sha256": "t", "source": "out/teacher"}  # fmt: skip


def _record(**changes: Any) -> dict[str, Any]:
    record = {"format_version": 1, "spec": {"features": []}, "teacher": dict(TEACHER),
              "corpus_fingerprint": "f", "tokenizer_hash": "t", "shard_size": 256,
              "extra": {"max_length": 64, "label_names": None}}  # fmt: skip
    return record | changes


def test_the_teacher_source_spelling_is_not_a_difference() -> None:
    moved = _record(teacher={**TEACHER, "source": "/abs/out/teacher"})
    assert run_differences(_record(), moved) == []
    assert rerun_differences(_record(), moved) == []


def test_each_difference_is_named() -> None:
    other = _record(
        teacher={**TEACHER, "weights_sha256": "x"}, extra={"max_length": 32, "label_names": None}
    )
    assert rerun_differences(_record(), other) == [
        "teacher.weights_sha256: cache has 'w', this run has 'x'",
        "max_length: cache has 64, this run has 32",
    ]
