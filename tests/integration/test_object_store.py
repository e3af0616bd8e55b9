"""Caches on an object store: a real S3-compatible server (moto) on 127.0.0.1, s3fs as client.

precompute -> inspect -> verify -> compare with a local copy -> CacheDataset -> distill, all
against ``s3://``; the endpoint and credentials come from the AWS environment variables only.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import Result
from typer.testing import CliRunner

from cachebrew.cache import open_cache
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cli import app

runner = CliRunner()


def _precompute(teacher: Path, data: Path, out: str, *extra: str) -> Result:
    args = ["precompute", "--teacher", str(teacher), "--data", str(data), "--out", out]
    flags = ["--label-field", "label", "--shard-size", "16", "--quiet"]
    return runner.invoke(app, [*args, *flags, *extra])


def test_s3_round_trip(
    s3_bucket: str, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    remote, local = f"{s3_bucket}/caches/sst", str(tmp_path / "local")
    features = ("--features", "logits,hidden:0,2", "--dtype", "fp32")
    for out in (remote, local):
        result = _precompute(tiny_teacher_dir, tiny_corpus_jsonl, out, *features)
        assert result.exit_code == 0, (result.output, result.exception)
        assert "40 examples" in result.output

    info = runner.invoke(app, ["inspect", remote, "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["num_shards"] == 3

    verified = runner.invoke(
        app, ["verify", remote, "--teacher", str(tiny_teacher_dir), "--sample", "3", "--json"]
    )
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["checksums"]["chunks"] > 0

    compared = runner.invoke(app, ["compare", remote, local, "--json"])
    assert compared.exit_code == 0, compared.output
    report = json.loads(compared.stdout)
    assert report["identical"] and report["common_examples"] == 40

    dataset = CacheDataset(remote, batch_size=8)
    assert sum(len(batch["example_ids"]) for batch in dataset) == 40


def test_distill_from_s3(
    s3_bucket: str, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    remote = f"{s3_bucket}/cache"
    result = _precompute(tiny_teacher_dir, tiny_corpus_jsonl, remote)
    assert result.exit_code == 0, (result.output, result.exception)
    config = tmp_path / "distill.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cache": remote,
                "student": str(tiny_teacher_dir),
                "out": str(tmp_path / "run"),
                "num_epochs": 1,
                "batch_size": 8,
                "eval": {"fraction": 0.2},
            }
        )
    )
    trained = runner.invoke(app, ["distill", "--config", str(config), "--quiet"])
    assert trained.exit_code == 0, (trained.output, trained.exception)
    assert (tmp_path / "run" / "metrics.json").exists()
    assert open_cache(remote).num_examples == 40


def test_a_missing_s3_cache_is_one_clear_line(s3_bucket: str) -> None:
    result = runner.invoke(app, ["inspect", f"{s3_bucket}/nothing-here"])
    assert result.exit_code != 0
    assert "does not exist" in str(result.exception) + result.output


def test_torchrun_two_ranks_on_s3_equal_a_local_single_process(
    s3_bucket: str, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    # rank 0 merges shards rank 1 published from another process: its listing cache must not hide them
    import os
    import subprocess
    import sys

    remote, local = f"{s3_bucket}/ranks", str(tmp_path / "local")
    args = ["precompute", "--teacher", str(tiny_teacher_dir), "--data", str(tiny_corpus_jsonl)]
    args += ["--label-field", "label", "--shard-size", "6", "--quiet"]
    assert (
        _precompute(tiny_teacher_dir, tiny_corpus_jsonl, local, "--shard-size", "6").exit_code == 0
    )
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [*torchrun, "--nproc_per_node", "2", "-m", "cachebrew", *args, "--out", remote],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    compared = runner.invoke(app, ["compare", remote, local])
    assert compared.exit_code == 0, compared.output
