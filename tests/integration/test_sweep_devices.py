"""`cachebrew sweep --devices`: runs spread over device slots, each pinned and given its
share of the CPU threads; device lists checked before anything runs."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cachebrew.cli import app
from cachebrew.errors import ConfigError
from cachebrew.runner import sweep as sweep_module
from cachebrew.runner.placement import device_slots, parse_devices, placement_env
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

runner = CliRunner()


def test_device_lists_are_parsed_and_checked() -> None:
    assert parse_devices(" cpu, cpu ") == ["cpu", "cpu"]
    assert device_slots(None) is None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=rf"cuda:{count}: this machine has {count} CUDA"):
        parse_devices(f"cpu,cuda:{count}")
    with pytest.raises(ConfigError, match="'gpu0' is not a device; use cpu or cuda:K"):
        parse_devices("gpu0")
    with pytest.raises(ConfigError, match="--parallel 3 with --devices cpu,cpu"):
        device_slots("cpu,cpu", parallel=3)


def test_a_slot_pins_by_environment() -> None:
    assert placement_env("cuda:3", 4) == {
        "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "3",
    }  # fmt: skip
    assert placement_env("cpu", 1)["CUDA_VISIBLE_DEVICES"] == ""


@pytest.fixture(scope="module")
def sweep_file(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path,
    tiny_vocab_size: int,
) -> Path:  # fmt: skip
    root = tmp_path_factory.mktemp("sweep_devices")
    cache = root / "cache"
    run_precompute(
        PrecomputeConfig(
            teacher=str(tiny_teacher_dir),
            data=str(tiny_corpus_jsonl),
            out=str(cache),
            label_field="label",
            features="logits",
        ),  # fmt: skip
        progress=False,
    )
    student = root / "bert-1l.json"
    student.write_text(json.dumps({
        "model_type": "bert", "vocab_size": tiny_vocab_size, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 64,
    }))  # fmt: skip
    base = {"cache": str(cache), "student": str(student), "num_steps": 2, "batch_size": 8}
    runs = [{"name": f"t{t}", "overrides": {"distill.temperature": t}} for t in (1, 2, 4)]
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": base, "runs": runs}))
    return path


def test_runs_take_free_slots_pinned_with_a_share_of_the_threads(
    sweep_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str, str]] = []
    running, peak = [0], [0]
    lock = threading.Lock()
    original = subprocess.run

    def recording(command: list[str], **kwargs: Any) -> Any:
        env = kwargs["env"]
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen.append(
                (env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"])
            )
        try:
            return original(command, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the slot's share wins over the sweep's own
    monkeypatch.setattr(sweep_module.subprocess, "run", recording)
    monkeypatch.setattr(sweep_module.placement, "threads_per_slot", lambda slots: 7 // slots)
    out = tmp_path / "sweep"
    args = ["sweep", str(sweep_file), "--out", str(out), "--devices", "cpu,cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert seen == [("", "3", "3")] * 3  # three runs, GPUs hidden, 7 // 2 threads each
    assert peak[0] <= 2  # two slots: never three runs at once
    rows = (out / "results.md").read_text()
    assert rows.count("| ok |") == 3, rows


def test_a_run_pinned_in_its_config_is_refused_with_devices(
    sweep_file: Path, tmp_path: Path
) -> None:
    args = ["sweep", str(sweep_file), "--out", str(tmp_path / "s"), "--devices", "cpu"]
    result = runner.invoke(app, [*args, "--set", "training.device=cuda:1"])
    assert result.exit_code == 1
    assert "training.device=cuda:1 with --devices cpu; leave it auto" in result.output
