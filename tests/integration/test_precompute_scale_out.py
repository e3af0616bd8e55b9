"""Scale-out precompute: torchrun ranks and --part job arrays give the same cache as one process.

Every comparison goes through `cachebrew compare` (exit 0 = identical example by example).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cachebrew.cache.format.storage import DONE, MANIFEST
from cachebrew.cli import app
from cachebrew.errors import ConfigError
from cachebrew.teacher.parallel import Partition, make_partition, parse_part
from cachebrew.world import World

runner = CliRunner()
TIMEOUT_S = 240
# 40 examples, 6 per shard: 7 windows, so ranks and parts get unequal numbers of shards
FLAGS = ("--label-field", "label", "--shard-size", "6", "--batch-size", "4", "--quiet")
FEATURES = ("--features", "logits,hidden:1", "--dtype", "fp16")


def _args(teacher: Path, data: Path, out: Path) -> list[str]:
    base = ["precompute", "--teacher", str(teacher), "--data", str(data), "--out", str(out)]
    return [*base, *FLAGS, *FEATURES]


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    text = result.output + ("" if result.exception is None else str(result.exception))
    return result.exit_code, text


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path
) -> Path:
    out = tmp_path_factory.mktemp("reference") / "cache"
    code, text = _cli(*_args(tiny_teacher_dir, tiny_corpus_jsonl, out))
    assert code == 0, text
    return out


def _assert_identical(a: Path, b: Path) -> None:
    code, text = _cli("compare", str(a), str(b), "--json")
    assert code == 0, text
    report = json.loads(text)
    assert report["identical"] and report["common_examples"] == 40, report


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", str(nproc), "-m", "cachebrew"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=_env()
    )


def test_torchrun_two_ranks_equal_one_process(
    reference: Path, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    done = _torchrun(2, _args(tiny_teacher_dir, tiny_corpus_jsonl, out))
    assert done.returncode == 0, done.stderr[-3000:]
    markers = sorted(p.name for p in (out / DONE).iterdir())
    assert markers == ["rank-00000-of-00002.json", "rank-00001-of-00002.json"]
    shards = json.loads((out / "_done" / markers[1]).read_text())["shards"]
    assert shards == [1, 3, 5]  # rank 1 wrote windows 1, 3, 5 and nothing else
    _assert_identical(reference, out)


_KILLED_RANK = """
import os, signal, sys
from cachebrew.cache.write import writer as writer_module
from cachebrew.cli import app

flush = writer_module.CacheWriter._flush

def flush_then_die(self):
    flush(self)
    if self.rank == 1:  # rank 1 dies (SIGKILL: no cleanup) after publishing its first shard
        os.kill(os.getpid(), signal.SIGKILL)

writer_module.CacheWriter._flush = flush_then_die
app(sys.argv[1:], prog_name="cachebrew")
"""


def test_a_killed_rank_leaves_a_cache_a_single_process_completes(
    reference: Path, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    script = tmp_path / "killed_rank.py"
    script.write_text(_KILLED_RANK)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)]
    args = [*_args(tiny_teacher_dir, tiny_corpus_jsonl, out), "--barrier-timeout", "20"]
    killed = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=_env()
    )
    assert killed.returncode != 0
    assert not (out / MANIFEST).exists()
    assert (out / "shards" / "00001" / "index.arrow").exists()  # rank 1's finished shard stays
    code, text = _cli(*_args(tiny_teacher_dir, tiny_corpus_jsonl, out))
    assert code == 0, text
    kept = re.search(r"(\d+) shards kept", text)
    assert kept is not None and int(kept.group(1)) >= 1, text  # at least rank 1's shard reused
    _assert_identical(reference, out)


def test_parts_in_shuffled_order_then_finalize(
    reference: Path, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    order = [2, 0, 1]
    random.Random(5).shuffle(order)
    for i, index in enumerate(order):
        code, text = _cli(*_args(tiny_teacher_dir, tiny_corpus_jsonl, out), "--part", f"{index}/3")
        assert code == 0, text
        # the last part to finish publishes the manifest, the others leave it to come
        assert (out / MANIFEST).exists() == (i == len(order) - 1)
    _assert_identical(reference, out)
    (out / MANIFEST).unlink()  # --finalize publishes it again from the parts' shards
    code, text = _cli("precompute", "--out", str(out), "--finalize")
    assert code == 0 and "40 examples in 7 shards" in text, text
    _assert_identical(reference, out)


def test_finalize_names_the_missing_part(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    for index in (0, 2):
        code, text = _cli(*_args(tiny_teacher_dir, tiny_corpus_jsonl, out), "--part", f"{index}/3")
        assert code == 0, text
    code, text = _cli("precompute", "--out", str(out), "--finalize")
    assert code == 1 and "parts 1/3 have not finished" in text, text
    assert not (out / MANIFEST).exists()
    code, text = _cli("precompute", "--out", str(tmp_path / "never"), "--finalize")
    assert code == 1 and "no precompute run was started" in text


def test_part_arguments() -> None:
    assert parse_part("2/5") == (2, 5) and parse_part(" 0 / 1 ") == (0, 1)
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--part"):
            parse_part(bad)
    assert make_partition("1/3") == Partition(World(1, 3, launcher="part"))
    assert [World(1, 3).owns(k) for k in range(7)] == [k % 3 == 1 for k in range(7)]


def test_part_refuses_overwrite(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    args = _args(tiny_teacher_dir, tiny_corpus_jsonl, tmp_path / "c")
    code, text = _cli(*args, "--part", "0/2", "--overwrite")
    assert code == 1 and "--overwrite with --part" in text
