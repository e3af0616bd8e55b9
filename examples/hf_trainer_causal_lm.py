"""Distil a causal LM with TRL's ``SFTConfig`` and ``DistillationTrainer`` from a ``sample:12`` cache.

Runs with no arguments in about a minute on a CPU, offline:

1. builds a tiny GPT-2 teacher from a config and fits it briefly to ``pipelines/tiny``'s
   sentences (plain ``transformers.Trainer``);
2. runs it once into a cache holding 12 sampled token ids per position with their counts
   (random-sampling KD, Anshumann et al. 2025): no (tokens, vocab) teacher tensor is stored;
3. trains a 1-layer GPT-2 student with ``DistillationTrainer`` configured by TRL's
   ``SFTConfig``: sparse KD + the hard-label LM loss, mixed by ``kd_loss_weight`` /
   ``hard_label_weight``; reports the dev perplexity of teacher and student.

    .venv/bin/python examples/hf_trainer_causal_lm.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from cachebrew.hf import DistillationTrainer
from cachebrew.models import load_tokenizer
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

TINY = Path(__file__).resolve().parent.parent / "pipelines" / "tiny"
DISTILL = {"temperature": 1, "kd_loss_weight": 1.0, "hard_label_weight": 0.5}
GPT = {
    "n_positions": 64,
    "n_head": 2,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "bos_token_id": 2,
    "eos_token_id": 3,
    "pad_token_id": 0,
}  # [CLS], [SEP], [PAD]


def texts(name: str) -> list[str]:
    lines = (TINY / name).read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line]


def lm_examples(tokenizer: Any, sentences: list[str]) -> list[dict[str, Any]]:
    return [tokenizer(s, truncation=True, max_length=32) for s in sentences]


def build_teacher(work: Path, steps: int) -> Path:
    """A 2-layer GPT-2 from a config, fitted to the training sentences for ``steps`` steps."""
    teacher = work / "teacher"
    if (teacher / "config.json").is_file():
        return teacher
    spec = importlib.util.spec_from_file_location("make_teacher", TINY / "make_teacher.py")
    make_teacher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_teacher)  # type: ignore[union-attr]
    make_teacher.train_tokenizer(texts("train.jsonl") + texts("dev.jsonl"), teacher, 512)
    tokenizer = load_tokenizer(teacher)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, **GPT))
    args = TrainingArguments(
        output_dir=str(work / "teacher_run"), per_device_train_batch_size=16, max_steps=steps,
        learning_rate=3e-3, save_strategy="no", report_to=[], use_cpu=True, seed=0,
    )  # fmt: skip
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    Trainer(model=model, args=args, train_dataset=lm_examples(tokenizer, texts("train.jsonl")),
            data_collator=collator).train()  # fmt: skip
    model.save_pretrained(teacher)
    return teacher


def build_cache(work: Path, teacher: Path) -> Path:
    cache = work / "cache"
    if not (cache / "manifest.json").is_file():
        config = PrecomputeConfig(
            teacher=str(teacher), data=str(TINY / "train.jsonl"), out=str(cache), id_field="id",
            logits="sample:12", max_length=32, shard_size=64,
        )  # fmt: skip
        run_precompute(config, progress=False)
    return cache


def training_args(work: Path, steps: int) -> TrainingArguments:
    """TRL's SFTConfig when TRL is installed (``pip install 'cachebrew[hf]'``), else Trainer's."""
    values = {
        "output_dir": str(work / "student"), "per_device_train_batch_size": 16,
        "max_steps": steps, "learning_rate": 3e-3, "warmup_steps": 0.1, "save_steps": steps // 2,
        "save_total_limit": 1, "logging_steps": 20, "report_to": [], "use_cpu": True, "seed": 0,
    }  # fmt: skip
    if importlib.util.find_spec("trl") is None:
        return TrainingArguments(**values)
    from trl import SFTConfig

    return SFTConfig(**values, bf16=False, gradient_checkpointing=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.out or Path(scratch)
        teacher = build_teacher(work, steps=150)
        cache = build_cache(work, teacher)
        tokenizer = load_tokenizer(teacher)
        dev = lm_examples(tokenizer, texts("dev.jsonl"))
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        student = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=32, n_layer=1, **GPT))
        trainer = DistillationTrainer(
            model=student, args=training_args(work, args.steps), cache=str(cache),
            distill_config=DISTILL, processing_class=tokenizer, eval_dataset=dev,
            data_collator=collator,
        )  # fmt: skip
        trainer.train()
        student_ppl = math.exp(trainer.evaluate()["eval_loss"])
        trainer.save_model(str(work / "student" / "final"))
        teacher_model = GPT2LMHeadModel.from_pretrained(teacher)
        judge = Trainer(model=teacher_model, args=trainer.args, data_collator=collator)
        teacher_ppl = math.exp(judge.evaluate(dev)["eval_loss"])
        print(f"dev perplexity: teacher {teacher_ppl:.1f}, student {student_ppl:.1f} "
              f"after {trainer.state.global_step} steps")  # fmt: skip


if __name__ == "__main__":
    main()
