"""`torchrun -m cachebrew distill`: DDP over the student gives the one-process weights, and a
DDP run killed mid-epoch resumes in one process (gloo, CPU, 2 ranks, a tiny student).

Sequence classification in fp32 with logits-only KD (per-example means), 40 examples, global
batch 8: every global batch is full, so 2 ranks x 4 examples compute the one-process gradient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from cachebrew.cli import app
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
KILL_SCRIPT = Path(__file__).with_name("kill_after_batches.py")
TIMEOUT_S = 300
FINAL = "checkpoints/checkpoint-gs10/student.safetensors"


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path
) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "cache"
    cfg = PrecomputeConfig(
        teacher=str(tiny_teacher_dir), data=str(tiny_corpus_jsonl), out=str(out),
        label_field="label", features="logits", dtype="fp32", shard_size=16,
    )  # fmt: skip
    run_precompute(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def config(
    tmp_path_factory: pytest.TempPathFactory, cache: Path, tiny_vocab_size: int,
    tiny_corpus_jsonl: Path,
) -> Callable[..., Path]:  # fmt: skip
    root = tmp_path_factory.mktemp("ddp_config")
    student = root / "bert-1l.json"
    student.write_text(json.dumps({
        "model_type": "bert", "vocab_size": tiny_vocab_size, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }))  # fmt: skip  # no dropout: one process and two ranks draw different masks

    def make(**training: Any) -> Path:
        data = {
            "cache": str(cache), "student": str(student),
            "distill": {"temperature": 4, "hard_label_weight": 0.5},
            "num_epochs": 2, "batch_size": 8, "shuffle_buffer": 16,
            "training": {"seed": 3, **training}, "optimizer": {"lr": 1e-3},
            "eval": {"data": str(tiny_corpus_jsonl)},
        }  # fmt: skip
        path = root / f"distill-{len(list(root.glob('distill-*')))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return env


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=_env())


def _one_process(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["distill", "--quiet", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return dict(json.loads(result.stdout))


def _max_abs_diff(a: Path, b: Path) -> float:
    left, right = load_file(a / FINAL), load_file(b / FINAL)
    assert left.keys() == right.keys()
    return max(float((left[k] - right[k]).abs().max()) for k in left)


@pytest.fixture(scope="module")
def reference(config: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    torch.set_num_threads(1)
    _one_process("--config", str(config()), "--out", str(out))
    return out


def test_two_ranks_train_the_one_process_weights(
    config: Callable[..., Path], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    done = _torchrun(2, "-m", "cachebrew", "distill", "--quiet", "--config", str(config()),
                     "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert _max_abs_diff(out, reference) < 1e-5

    metrics = json.loads((out / "metrics.json").read_text())
    one = json.loads((reference / "metrics.json").read_text())
    assert metrics["steps"] == one["steps"] == 10
    assert metrics["examples_trained"] == one["examples_trained"] == 80  # summed over ranks
    # the logged loss is the mean of the ranks' means: the one-process loss of each batch
    assert metrics["loss_curve"] == pytest.approx(one["loss_curve"], rel=1e-5)
    assert metrics["eval_examples"] == 40 and metrics["value"] == pytest.approx(one["value"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name != "latest") == [
        "checkpoint-gs10", "checkpoint-gs5",
    ]  # fmt: skip  # one writer: rank 0


def test_an_odd_global_batch_is_refused_naming_the_ranks(
    config: Callable[..., Path], tmp_path: Path
) -> None:
    done = _torchrun(2, "-m", "cachebrew", "distill", "--quiet", "--config", str(config()),
                     "--out", str(tmp_path / "odd"), "--set", "batch_size=7")  # fmt: skip
    assert done.returncode != 0
    assert "batch_size: 7 is the global batch and must be divisible by the 2 ranks" in done.stderr
    assert not (tmp_path / "odd" / "checkpoints").exists()


def test_killed_ddp_run_resumes_in_one_process_and_finishes(
    config: Callable[..., Path], reference: Path, tmp_path: Path
) -> None:
    # 5 steps per epoch, ckpt_frequency 2: saves at steps 2, 5, 7, 10. Each rank is killed
    # when it asks for its 9th batch: the latest checkpoint is gs7, mid epoch 2.
    cfg = config(ckpt_frequency=2)
    killed = tmp_path / "killed"
    done = _torchrun(2, str(KILL_SCRIPT), "8", "distill", "--quiet", "--config", str(cfg),
                     "--out", str(killed))  # fmt: skip
    assert done.returncode != 0
    assert (killed / "checkpoints" / "latest").read_text().strip() == "checkpoint-gs7"
    assert not (killed / "metrics.json").exists()

    resumed = _one_process("--config", str(cfg), "--out", str(killed), "--resume")
    assert resumed["resumed_from_step"] == 7 and resumed["steps"] == 10
    assert resumed["steps_this_run"] == 3
    # the position was a global batch index: one process continued the same global order
    assert _max_abs_diff(killed, reference) < 1e-5
