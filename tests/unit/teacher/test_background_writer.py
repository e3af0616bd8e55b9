"""The writer thread: what precompute's progress bar shows is what the writer wrote."""

from __future__ import annotations

from pathlib import Path

import torch
from synthetic_cache import synthetic_examples

from cachebrew.cache import CacheWriter, parse_feature_spec
from cachebrew.teacher.background_writer import BackgroundWriter


def test_progress_text_shows_the_bytes_the_writer_put_on_disk(tmp_path: Path) -> None:
    spec = parse_feature_spec("logits,hidden:0", dtype="fp32", codec="zstd")
    examples = synthetic_examples(spec, 24, min_length=64, max_length=64, hidden_size=64)
    writer = CacheWriter(
        tmp_path / "cache",
        spec,
        teacher_info={"class": "Tiny"},
        corpus_fingerprint="c",
        shard_size=8,
    )
    with writer, BackgroundWriter(writer) as sink:
        assert sink.progress_text() == "0.0 MB written"
        for example in examples:
            features = {k: torch.from_numpy(v) for k, v in example["features"].items()}
            sink.put({**example, "features": features})
    assert writer.manifest is not None
    arrays = writer.manifest["arrays"].values()
    disk = sum(a["bytes"] for a in arrays)
    raw = sum(a["uncompressed_bytes"] for a in arrays)
    assert (writer.bytes_written, writer.uncompressed_bytes_written) == (disk, raw)
    assert raw == 24 * (64 * 64 + 3) * 4  # fp32: hidden (L, D) and logits (1, C)
    assert sink.progress_text() == f"{disk / 1e6:.1f} MB written, ratio {raw / disk:.2f}x"
    assert disk > 0.1e6  # the bar shows a number, not 0.0
