"""DDP distill: torchrun 2 processes x 1 thread against 1 process x 2 threads, same run.

    PYTHONPATH=. python benchmarks/ddp_distill.py [--examples 512] [--out runs/bench-ddp]

Self-contained: the scale-out benchmark's BERT-shaped teacher (4 layers, hidden 256, fresh
weights) and random-word corpus, one fp32 cache (logits + hidden 4), then the same distill
config (a fresh 2-layer, 128-hidden student; KD + hidden_mse through a 128 -> 256 projection;
global batch 32) trained both ways. Reports the training seconds from each run's metrics.json
(after model loading), the whole command's wall time, their ratios and the largest weight
difference between the two final students. Prints one JSON object and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file
from scale_out import build_inputs


def timed(command: list[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=3600)
    return time.perf_counter() - start


def distill_config(root: Path, cache: Path, epochs: int) -> Path:
    student = root / "student.json"
    student.write_text(json.dumps({
        "model_type": "bert", "vocab_size": 405, "hidden_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 512, "max_position_embeddings": 128,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }))  # fmt: skip
    match = {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse",
             "weight": 1, "proj": ["linear", 128, 256]}  # fmt: skip
    config = {
        "cache": str(cache), "student": str(student), "num_epochs": epochs, "batch_size": 32,
        "distill": {"temperature": 4, "intermediate_matches": [match]},
        "training": {"seed": 0}, "optimizer": {"lr": 1e-3},
    }  # fmt: skip
    path = root / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def max_weight_diff(a: Path, b: Path) -> float:
    final = Path("checkpoints") / (a / "checkpoints" / "latest").read_text().strip()
    left, right = (
        load_file(a / final / "student.safetensors"),
        load_file(b / final / "student.safetensors"),
    )
    return max(float((left[k] - right[k]).abs().max()) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-ddp")
    opts = parser.parse_args()
    root = Path(opts.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    teacher, corpus = build_inputs(root, opts.examples)
    python = [sys.executable, "-m", "cachebrew"]
    cache = root / "cache"
    subprocess.run([*python, "precompute", "--teacher", str(teacher), "--data", str(corpus),
                    "--out", str(cache), "--label-field", "label", "--features", "logits,hidden:4",
                    "--dtype", "fp32", "--quiet", "--device", "cpu"], check=True)  # fmt: skip
    config = distill_config(root, cache, opts.epochs)
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone",
                "--nproc_per_node", "2", "-m", "cachebrew"]  # fmt: skip
    args = ["distill", "--quiet", "--config", str(config), "--out"]
    one_wall = timed([*python, *args, str(root / "one")], threads=2)
    two_wall = timed([*torchrun, *args, str(root / "two")], threads=1)
    one = json.loads((root / "one" / "metrics.json").read_text())
    two = json.loads((root / "two" / "metrics.json").read_text())
    results: dict[str, Any] = {
        "examples": opts.examples,
        "steps": one["steps"],
        "train_s_1proc_2threads": one["train_seconds"],
        "train_s_2procs_1thread": two["train_seconds"],
        "train_speedup_2procs": one["train_seconds"] / two["train_seconds"],
        "wall_s_1proc_2threads": one_wall,
        "wall_s_2procs_1thread": two_wall,
        "wall_speedup_2procs": one_wall / two_wall,
        "final_loss_1proc": one["final_loss"],
        "final_loss_2procs": two["final_loss"],
        "max_abs_weight_diff": max_weight_diff(root / "one", root / "two"),
    }
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
