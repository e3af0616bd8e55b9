"""Fixtures of the fault suite: the real CLI entry point, a prebuilt cache, file snapshots.

- ``cli(*args) -> Outcome``: runs ``cachebrew.cli.main`` in this process (the same error
  mapping as the console script) and returns the exit code, stdout and stderr.
- ``built_cache``: a finished 40-example cache (3 shards: logits, hidden 0/2, attention 1) built
  once per session; ``cache_copy`` gives each test its own copy to damage.
- ``snapshot(dir)``: ``{relative path: sha256}`` of every file, to assert nothing was lost.
- ``student_json``: a 1-layer BERT student config matching the tiny teacher's vocabulary.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_helpers import FEATURES, Outcome

from cachebrew.cli import main


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    def run(*args: str) -> Outcome:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def built_cache(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path
) -> Path:
    from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

    out = tmp_path_factory.mktemp("reliability") / "cache"
    cfg = PrecomputeConfig(
        teacher=str(tiny_teacher_dir),
        data=str(tiny_corpus_jsonl),
        out=str(out),
        label_field="label",
        features=FEATURES,
        shard_size=16,
    )
    run_precompute(cfg, progress=False)
    return out


@pytest.fixture
def cache_copy(built_cache: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cache"
    shutil.copytree(built_cache, out, symlinks=True)
    return out


@pytest.fixture(scope="session")
def student_json(tmp_path_factory: pytest.TempPathFactory, tiny_vocab_size: int) -> Path:
    path = tmp_path_factory.mktemp("students") / "bert-1l.json"
    config = {
        "model_type": "bert",
        "vocab_size": tiny_vocab_size,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
    path.write_text(json.dumps(config))
    return path
