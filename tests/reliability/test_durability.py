"""Power cuts: nothing is published before its bytes are durable, and every crash point reads
as the previous state or the new one (see :mod:`durability_recorder` for the crash model).

Two saves are recorded: a precompute that publishes one shard and the manifest, and a
training run that saves two checkpoints (the second over the first's ``latest``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from distill_helpers import adaptor, batches, teacher_adaptor, teacher_and_student
from durability_recorder import Recorder, materialise, tree_bytes

import cachebrew
from cachebrew.cache.read.reader import open_cache
from cachebrew.distill import checkpoint as ckpt


def assert_published_after_durable(recorder: Recorder) -> None:
    """Every publishing rename moves only fsynced bytes, and its destination's directory is
    fsynced before the next publishing rename (or the end)."""
    renames = recorder.publishing_renames()
    assert renames, "nothing was published"
    for number, (index, event) in enumerate(renames):
        late = sorted(rel for rel, durable in event.durable.items() if not durable)
        assert not late, f"{event.target} published before these were fsynced: {late}"
        stop = renames[number + 1][0] if number + 1 < len(renames) else len(recorder.events)
        parent = os.path.dirname(event.target)
        synced = [e.path for e in recorder.events[index + 1 : stop] if e.kind == "fsync"]
        assert parent in synced, f"{parent} not fsynced after publishing {event.target}"


# ------------------------------------------------------------------------------ precompute


def run_precompute(teacher: Path, corpus: Path, out: Path) -> None:
    from cachebrew.teacher.precompute import PrecomputeConfig
    from cachebrew.teacher.precompute import run_precompute as run

    config = PrecomputeConfig(
        teacher=str(teacher),
        data=str(corpus),
        out=str(out),
        label_field="label",
        features="logits,hidden:1",
        shard_size=64,  # 40 examples: one shard
    )
    run(config, progress=False)


def check_cache_view(view_dir: Path, final: dict[str, bytes]) -> str:
    """'previous' (nothing published), 'partial' (a shard, no manifest) or 'new'; raises
    AssertionError for a view that lies."""
    shard = view_dir / "shards" / "00000"
    if (shard / "index.arrow").exists():
        # A published shard (kept by a resumed run) must be exactly the finished one.
        got = {k: v for k, v in tree_bytes(view_dir).items() if k.startswith("shards/")}
        want = {k: v for k, v in final.items() if k.startswith("shards/")}
        assert got == want, "a published shard differs from the one written"
    if not (view_dir / "manifest.json").exists():
        return "partial" if (shard / "index.arrow").exists() else "previous"
    reader = open_cache(str(view_dir))
    assert len(reader) == 40
    reader.verify_all()
    return "new"


def test_precompute_publishes_only_durable_bytes_and_survives_a_cut_anywhere(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    recorder = Recorder(out)
    with recorder.recording():
        run_precompute(tiny_teacher_dir, tiny_corpus_jsonl, out)
    assert_published_after_durable(recorder)
    final = tree_bytes(out)
    seen = []
    for number, view in enumerate(recorder.views):
        seen.append(check_cache_view(materialise(view, tmp_path / f"cut-{number}"), final))
    assert seen[0] == "previous" and seen[-1] == "new"
    assert "partial" in seen  # the replay did cut between the shard and the manifest


# ------------------------------------------------------------------------------ checkpoints


def train_with_two_checkpoints(output_dir: Path) -> None:
    teacher, student = teacher_and_student()
    train_config = cachebrew.TrainingConfig(device="cpu", output_dir=str(output_dir), ckpt_steps=1)
    distiller = cachebrew.BasicDistiller(
        train_config, cachebrew.DistillationConfig(), teacher, student, teacher_adaptor, adaptor
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    distiller.train(optimizer, batches(2), num_steps=2)


def check_checkpoint_view(view_dir: Path, final: dict[str, bytes]) -> str:
    """The checkpoint ``latest`` names, loaded, and byte-identical to the one written."""
    pointer = view_dir / ckpt.LATEST
    if not pointer.exists():
        return "none"
    name = pointer.read_text().strip()
    assert name in ("checkpoint-gs1", "checkpoint-gs2"), f"latest names {name!r}"
    got = {k: v for k, v in tree_bytes(view_dir).items() if k.startswith(f"{name}/")}
    want = {k: v for k, v in final.items() if k.startswith(f"{name}/")}
    assert got == want, f"latest names {name}, which is not the checkpoint written"
    _, student = teacher_and_student()
    path = ckpt.resolve_checkpoint("latest", str(view_dir))
    ckpt.load_checkpoint(path, student, None)
    return name


def test_checkpoint_save_publishes_only_durable_bytes_and_survives_a_cut_anywhere(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    recorder = Recorder(out)
    with recorder.recording():
        train_with_two_checkpoints(out)
    assert_published_after_durable(recorder)
    final = tree_bytes(out)
    seen = [
        check_checkpoint_view(materialise(view, tmp_path / f"cut-{number}"), final)
        for number, view in enumerate(recorder.views)
    ]
    assert seen[0] == "none" and seen[-1] == "checkpoint-gs2"
    assert "checkpoint-gs1" in seen  # a cut during the second save keeps the first
