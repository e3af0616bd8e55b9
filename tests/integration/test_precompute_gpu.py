"""The CUDA path of precompute: pinned non-blocking device->host copies read by the writer
thread after their event, the same cache as on the CPU (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cachebrew.cache import open_cache
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cache(teacher: Path, corpus: Path, out: Path, device: str) -> Path:
    cfg = PrecomputeConfig(
        teacher=str(teacher), data=str(corpus), out=str(out), label_field="label",
        features="logits,hidden:1,attention_sum:1", dtype="fp32", device=device,
    )  # fmt: skip
    run_precompute(cfg, progress=False)
    return out


@needs_cuda
def test_cuda_precompute_equals_the_cpu_cache(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    cpu = open_cache(_cache(tiny_teacher_dir, tiny_corpus_jsonl, tmp_path / "cpu", "cpu"))
    gpu = open_cache(_cache(tiny_teacher_dir, tiny_corpus_jsonl, tmp_path / "gpu", "cuda"))
    assert cpu.example_ids() == gpu.example_ids()
    for example_id in cpu.example_ids():
        a, b = cpu.get(example_id), gpu.get(example_id)
        for name, values in a["features"].items():
            np.testing.assert_allclose(values, b["features"][name], rtol=1e-4, atol=1e-5)
