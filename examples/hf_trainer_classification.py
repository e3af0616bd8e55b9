"""Distil a BERT classifier with Hugging Face ``Trainer`` from a cachebrew teacher cache.

Runs with no arguments in about a minute on a CPU, offline:

1. builds the tiny pipeline's teacher (a 4-layer BERT fine-tuned on ``pipelines/tiny``'s
   sentences, ``pipelines/tiny/make_teacher.py``);
2. runs it once into a cache: log-probabilities for KD and its last hidden layer;
3. trains a 2-layer student with ``DistillationTrainer`` (KD + hard labels + a hidden-state
   match through a trained projection), evaluates it with ``compute_metrics`` on the dev set
   and saves it as a plain Hugging Face model.

    .venv/bin/python examples/hf_trainer_classification.py [--out DIR] [--epochs N]

Launch the same script with ``torchrun --nproc_per_node 2`` or ``accelerate launch`` for data
parallelism (README, "Use your own trainer").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    TrainingArguments,
)

from cachebrew.hf import DistillationTrainer
from cachebrew.models import load_tokenizer
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

TINY = Path(__file__).resolve().parent.parent / "pipelines" / "tiny"
DISTILL = {  # the same `distill:` section a `cachebrew distill` run config holds
    "temperature": 4,
    "hard_label_weight": 0.5,
    "intermediate_matches": [
        {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 32, 64]},
    ],
}  # fmt: skip


def build_cache(work: Path) -> tuple[Path, Path]:
    """The teacher (built and fine-tuned offline) and its cache: log-probs + hidden layer 4."""
    teacher, cache = work / "teacher", work / "cache"
    if not (teacher / "config.json").is_file():
        subprocess.run(
            [sys.executable, str(TINY / "make_teacher.py"), "--config", str(TINY / "teacher.json"),
             "--data", str(TINY / "train.jsonl"), "--out", str(teacher), "--epochs", "10"],
            check=True,
        )  # fmt: skip
    if not (cache / "manifest.json").is_file():
        config = PrecomputeConfig(
            teacher=str(teacher), data=str(TINY / "train.jsonl"), out=str(cache),
            id_field="id", label_field="label", features="logits:logprobs,hidden:4",
            max_length=32, shard_size=64,
        )  # fmt: skip
        run_precompute(config, progress=False)
    return teacher, cache


def dev_set(tokenizer: object) -> list[dict[str, object]]:
    """The dev sentences as tokenized examples (evaluation is plain Trainer evaluation)."""
    rows = [json.loads(line) for line in (TINY / "dev.jsonl").read_text().splitlines() if line]
    return [
        {**tokenizer(row["text"], truncation=True, max_length=32), "labels": row["label"]}
        for row in rows
    ]


def accuracy(prediction: object) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument("--epochs", type=float, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.out or Path(scratch)
        teacher, cache = build_cache(work)
        tokenizer = load_tokenizer(teacher)
        config = BertConfig.from_json_file(TINY / "students" / "bert-2l.json")
        student = BertForSequenceClassification(config)  # 2 labels, from the cache's teacher
        training = TrainingArguments(
            output_dir=str(work / "student"), per_device_train_batch_size=16,
            num_train_epochs=args.epochs, learning_rate=2e-3, weight_decay=0.01,
            warmup_steps=0.1, eval_strategy="epoch", save_strategy="epoch",
            save_total_limit=2, logging_steps=10, report_to=[], seed=0, use_cpu=True,
        )  # fmt: skip
        trainer = DistillationTrainer(
            model=student, args=training, cache=str(cache), distill_config=DISTILL,
            processing_class=tokenizer, eval_dataset=dev_set(tokenizer),
            data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
        )  # fmt: skip
        trainer.train()
        scores = trainer.evaluate()
        trainer.save_model(str(work / "student" / "final"))
        print(
            f"student dev accuracy {scores['eval_accuracy']:.3f} after {trainer.state.global_step} steps"
        )


if __name__ == "__main__":
    main()
