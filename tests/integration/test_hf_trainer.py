"""DistillationTrainer (a transformers.Trainer) trains the weights `cachebrew distill` trains.

Sequence classification, fp32, no dropout: dense logits KD + a hidden-state match through a
trained linear projection + hard labels, gradient accumulation 2, linear warm-up/decay, clipping.
Same cache, student init, optimizer, schedule, seed and batches => the same final weights
(student and projections) within 1e-5. Then: a killed Trainer run resumed from its checkpoint
ends on the uninterrupted weights, checkpoints hold the projections, and the loss terms are
logged as separate scalars.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments
from typer.testing import CliRunner

from cachebrew import models
from cachebrew.cli import app
from cachebrew.hf import PROJECTIONS_FILE, DistillationTrainer
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

ROOT = Path(__file__).resolve().parents[2]
SEED, LR, EPOCHS, BATCH, GA, CLIP = 3, 1e-3, 2, 4, 2, 0.05  # CLIP: clips every step
DISTILL = {
    "temperature": 4,
    "hard_label_weight": 0.5,
    "intermediate_matches": [
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 16, 32]},
    ],
}  # fmt: skip
STEPS = 40 // BATCH // GA * EPOCHS  # 40 examples: 10 batches, 5 steps per epoch


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path,
    tiny_vocab_size: int,
) -> dict[str, Any]:  # fmt: skip
    root = tmp_path_factory.mktemp("hf_trainer")
    cache = root / "cache"
    run_precompute(
        PrecomputeConfig(
            teacher=str(tiny_teacher_dir), data=str(tiny_corpus_jsonl), out=str(cache),
            label_field="label", features="logits:logprobs,hidden:2", dtype="fp32",
            shard_size=16,
        ),
        progress=False,
    )  # fmt: skip
    student = root / "bert-1l.json"
    student.write_text(json.dumps({
        "model_type": "bert", "vocab_size": tiny_vocab_size, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }))  # fmt: skip
    run = {
        "cache": str(cache), "student": str(student), "distill": DISTILL,
        "num_epochs": EPOCHS, "batch_size": BATCH, "shuffle_buffer": 16, "max_grad_norm": CLIP,
        "training": {"seed": SEED, "gradient_accumulation_steps": GA},
        "optimizer": {"lr": LR, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_steps": 2},
    }  # fmt: skip
    config = root / "distill.yaml"
    config.write_text(yaml.safe_dump(run))
    return {"root": root, "cache": cache, "student": student, "config": config,
            "teacher": tiny_teacher_dir}  # fmt: skip


@pytest.fixture(scope="module")
def reference(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "cachebrew_run"
    result = CliRunner().invoke(
        app, ["distill", "--quiet", "--config", str(setup["config"]), "--out", str(out)]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return out / "checkpoints" / f"checkpoint-gs{STEPS}"


def make_trainer(setup: dict[str, Any], out: Path, **overrides: Any) -> DistillationTrainer:
    student = models.load_model(
        str(setup["student"]), task="sequence_classification", num_labels=3, role="student",
        seed=SEED,
    ).model  # fmt: skip  # the runner's student init
    values: dict[str, Any] = {
        "output_dir": str(out), "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": GA, "num_train_epochs": EPOCHS, "learning_rate": LR,
        "weight_decay": 0.01, "max_grad_norm": CLIP, "lr_scheduler_type": "linear",
        "warmup_steps": 2, "optim": "adamw_torch", "seed": SEED, "report_to": [],
        "use_cpu": True, "save_strategy": "no", "logging_steps": 1, **overrides,
    }  # fmt: skip
    return DistillationTrainer(
        model=student,
        args=TrainingArguments(**values),
        cache=str(setup["cache"]),
        distill_config=setup["config"],  # the run config's distill: section
        processing_class=models.load_tokenizer(setup["teacher"]),
        dataset_options={"buffer_size": 16},
    )


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def weights(trainer: DistillationTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_trainer_equals_cachebrew_distill(setup: dict[str, Any], reference: Path, tmp_path: Path):
    trainer = make_trainer(setup, tmp_path / "hf")
    trainer.train()
    assert trainer.state.global_step == STEPS
    assert max_diff(weights(trainer), load_file(reference / "student.safetensors")) < 1e-5
    projections = {k: v.detach() for k, v in trainer.projections.state_dict().items()}
    assert max_diff(projections, load_file(reference / PROJECTIONS_FILE)) < 1e-5
    # every loss term is its own logged scalar, next to Trainer's loss
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == STEPS
    for name in ("unweighted_kd_loss", "unweighted_hidden_hidden_mse_1_2",
                 "unweighted_hard_label_loss"):  # fmt: skip
        assert all(name in row for row in logged), (name, logged[0])


class _StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step == self.step:
            raise KeyboardInterrupt  # a kill right after the checkpoint of this step
        return control


def test_killed_and_resumed_run_ends_on_the_same_weights(
    setup: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    save = {"save_strategy": "steps", "save_steps": 3, "save_total_limit": 2}
    killed = make_trainer(setup, out, **save)
    killed.add_callback(_StopAt(7))  # mid epoch 2 (5 steps per epoch); saved at 3 and 6
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    checkpoints = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]
    assert (out / "checkpoint-6" / PROJECTIONS_FILE).is_file()
    assert "0.weight" in load_file(out / "checkpoint-6" / PROJECTIONS_FILE)

    resumed = make_trainer(setup, out, **save)
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG it starts with
    with torch.no_grad():
        for param in resumed.projections.parameters():
            param.add_(1.0)  # overwritten by the checkpoint's projections
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == STEPS
    assert max_diff(weights(resumed), load_file(reference / "student.safetensors")) < 1e-5
    projections = {k: v.detach() for k, v in resumed.projections.state_dict().items()}
    assert max_diff(projections, load_file(reference / PROJECTIONS_FILE)) < 1e-5


# ------------------------------------------------------------------- several processes

WORKER = Path(__file__).with_name("hf_trainer_worker.py")
TIMEOUT_S = 300


def _launch(
    nproc: int, setup: dict[str, Any], out: Path, per_device: int, clip: float = 0.05,
    launcher: list[str] | None = None, env: dict[str, str] | None = None, ok: bool = True,
) -> None:  # fmt: skip
    """Run the worker under ``launcher`` (default: ``torchrun --nproc_per_node nproc``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(setup["cache"]), str(setup["student"]), str(setup["teacher"]), str(out)]
    launcher = launcher or [str(torchrun), "--standalone", "--nproc_per_node", str(nproc)]
    command = [*launcher, str(WORKER), *args, str(per_device), str(clip)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "one_process"
    _launch(1, setup, out, per_device=8)
    return out


def test_two_processes_train_the_one_process_weights(
    setup: dict[str, Any], one_process: Path, tmp_path: Path
) -> None:
    _launch(2, setup, tmp_path / "two", per_device=4)  # the same global batches of 8
    for name in ("student.safetensors", PROJECTIONS_FILE):
        one, two = load_file(one_process / name), load_file(tmp_path / "two" / name)
        assert max_diff(one, two) < 1e-5, name
    one_log = json.loads((one_process / "log.json").read_text())
    two_log = json.loads((tmp_path / "two" / "log.json").read_text())
    assert (one_log["world_size"], two_log["world_size"]) == (1, 2)
    assert two_log["wrapped"] == "DistributedDataParallel"
    losses = [
        [row["unweighted_kd_loss"] for row in run["log"] if "loss" in row]
        for run in (one_log, two_log)
    ]  # the mean over the ranks of each rank's mean: the one-process value
    assert len(losses[0]) == 10 and losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_accelerate_launch_trains_the_one_process_weights(
    setup: dict[str, Any], one_process: Path, tmp_path: Path
) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    with socket.socket() as probe:  # a free port, named (port 0 left the rendezvous to chance)
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]  # fmt: skip
    _launch(2, setup, tmp_path / "acc", per_device=4, launcher=launch)
    for name in ("student.safetensors", PROJECTIONS_FILE):
        one, two = load_file(one_process / name), load_file(tmp_path / "acc" / name)
        assert max_diff(one, two) < 1e-5, name
    assert json.loads((tmp_path / "acc" / "log.json").read_text())["world_size"] == 2


def test_a_killed_process_resumes_to_the_uninterrupted_weights(
    setup: dict[str, Any], one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    saving = {"HF_WORKER_SAVE_STEPS": "3"}  # 5 steps per epoch: saved at 3 and 6
    _launch(1, setup, out, per_device=8, ok=False,
            env={**saving, "HF_WORKER_KILL_AT": "8"})  # fmt: skip  # SIGKILL mid epoch 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    _launch(1, setup, out, per_device=8, env={**saving, "HF_WORKER_RESUME": "1"})
    for name in ("student.safetensors", PROJECTIONS_FILE):
        assert max_diff(load_file(one_process / name), load_file(out / name)) < 1e-5, name
