"""A Hugging Face Trainer step from the cache against cachebrew's own loop's step (same student,
same batches) and against Trainer with a live teacher. Offline: no data/ needed.

Usage: ``python benchmarks/hf_trainer_step.py [--steps N] [--examples N]``. Prints a Markdown
table and writes ``runs/bench-hf-trainer/results.json``.

Teacher: BERT 6 layers x 256 hidden (4 heads, FFN 1024), fresh weights; student: 4 layers x 312
hidden (12 heads, FFN 1200, TinyBERT-4's shape), fresh; batches of 16 texts of ~100-128 tokens
(12 tiny-pipeline sentences each, tokenized by the tiny WordPiece vocabulary). Loss: soft-label
CE at T = 4, hard labels (weight 0.5) and one ``hidden_mse`` match (student layer 4 to teacher
layer 6 through a trained linear 312 -> 256 projection); AdamW, clipping at 1.0. The cache is
fp16 with the default codec, read with ``prefetch=1`` in both trainers (the ``distill`` default).

Runs (each timed after 2 warm-up steps as the wall time between consecutive step starts;
cachebrew loop and Trainer alternate, twice each, means reported):

1. **cachebrew loop**: ``GeneralDistiller`` from the cache (``model_T=None``).
2. **DistillationTrainer**: ``transformers.Trainer`` subclass from the same cache.
3. **Trainer, live teacher**: the same Trainer with the teacher's forward on every batch
   (inputs from the cache, no teacher features read): the cost the cache saves.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "pipelines" / "tiny"
OUT = ROOT / "runs" / "bench-hf-trainer"
BATCH, WARMUP = 16, 2
DISTILL = {
    "temperature": 4,
    "hard_label_weight": 0.5,
    "intermediate_matches": [
        {"layer_T": 6, "layer_S": 4, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 312, 256]},
    ],
}  # fmt: skip


def build_inputs(num_examples: int) -> tuple[Path, Path]:
    """Teacher directory (fresh BERT + tiny tokenizer) and its fp16 cache."""
    from transformers import BertConfig, BertForSequenceClassification

    from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

    spec = importlib.util.spec_from_file_location("make_teacher", TINY / "make_teacher.py")
    make_teacher = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(make_teacher)  # type: ignore[union-attr]
    rows = [json.loads(line) for line in (TINY / "train.jsonl").read_text().splitlines() if line]
    teacher, corpus, cache = OUT / "teacher", OUT / "corpus.jsonl", OUT / "cache"
    make_teacher.train_tokenizer([r["text"] for r in rows], teacher, 512)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=512, hidden_size=256, num_hidden_layers=6,
                        num_attention_heads=4, intermediate_size=1024, num_labels=2)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(teacher)
    with corpus.open("w") as f:
        for i in range(num_examples):
            text = " ".join(rows[(12 * i + k) % len(rows)]["text"] for k in range(12))
            f.write(json.dumps({"id": f"t{i}", "text": text, "label": i % 2}) + "\n")
    run_precompute(
        PrecomputeConfig(teacher=str(teacher), data=str(corpus), out=str(cache), id_field="id",
                         label_field="label", features="logits:logprobs,hidden:6",
                         max_length=128, batch_size=BATCH),
        progress=False,
    )  # fmt: skip
    return teacher, cache


def student() -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=512, hidden_size=312, num_hidden_layers=4,
                        num_attention_heads=12, intermediate_size=1200, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(1)
    return BertForSequenceClassification(config)


def summary(starts: list[float]) -> dict[str, float]:
    times = starts[WARMUP:]
    seconds_per_step = (times[-1] - times[0]) / (len(times) - 1)
    return {"steps": len(times) - 1, "ms_per_step": 1000 * seconds_per_step,
            "examples_per_s": BATCH / seconds_per_step}  # fmt: skip


def cachebrew_loop(cache: Path, teacher: Path, steps: int) -> dict[str, float]:
    from cachebrew import DistillationConfig, GeneralDistiller, TrainingConfig
    from cachebrew.cache.feed.dataset import CacheDataset
    from cachebrew.models import default_adaptor, load_tokenizer
    from cachebrew.runner.tokens import StudentTokens

    options = StudentTokens(load_tokenizer(teacher)).dataset_kwargs()
    options.pop("student_items")
    dataset = CacheDataset(str(cache), batch_size=BATCH, prefetch=1, **options)
    from cachebrew.distill.tracking import TrainObserver

    starts: list[float] = []

    class Observer(TrainObserver):
        def on_step(self, *args: Any, **kwargs: Any) -> None:  # the period between steps
            starts.append(time.perf_counter())

    model = student()
    distiller = GeneralDistiller(
        TrainingConfig(device="cpu", output_dir=str(OUT / "ckpt-loop"), seed=0),
        DistillationConfig.from_dict(DISTILL), None, model, None,
        lambda batch, outputs: default_adaptor(batch, outputs, kind="sequence_classification"),
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    job = distiller.make_job(optimizer, _source(dataset), _plan(distiller, steps),
                             max_grad_norm=1.0, observer=Observer(),
                             forward_args={"output_hidden_states": True})  # fmt: skip
    distiller.run_job(job)
    return summary(starts)


def _source(dataset: Any) -> Any:
    from cachebrew.distill.sources import SingleSource

    return SingleSource(dataset)


def _plan(distiller: Any, steps: int) -> Any:
    from cachebrew.distill.base import make_plan

    return make_plan(distiller.t_config, [], None, WARMUP + steps + 1)


def trainer_run(cache: Path, teacher: Path, steps: int, live: bool) -> dict[str, float]:
    from transformers import TrainerCallback, TrainingArguments

    from cachebrew.hf import DistillationTrainer
    from cachebrew.models import load_model, load_tokenizer

    starts: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            starts.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(OUT / "ckpt-trainer"), per_device_train_batch_size=BATCH,
        max_steps=WARMUP + steps + 1, learning_rate=1e-4, lr_scheduler_type="constant",
        max_grad_norm=1.0, optim="adamw_torch", save_strategy="no", report_to=[],
        logging_steps=50, use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer_class = LiveTeacherTrainer if live else DistillationTrainer
    trainer = trainer_class(
        model=student(), args=args, cache=str(cache), distill_config=DISTILL,
        processing_class=load_tokenizer(teacher), callbacks=[Clock()],
        dataset_options={"teacher_cache": not live},
    )  # fmt: skip
    if live:
        trainer.use_teacher(load_model(str(teacher)))
    trainer.train()
    return summary(starts)


def _live_teacher_trainer() -> type:
    from cachebrew.distill.objectives import TeacherSide
    from cachebrew.hf import DistillationTrainer

    class Live(DistillationTrainer):  # type: ignore[misc, valid-type]
        """DistillationTrainer with the teacher run on every batch (the online baseline)."""

        def use_teacher(self, loaded: Any) -> None:
            loaded.model.eval()
            side = TeacherSide(models=[loaded.model], adaptors=[loaded.adaptor])
            self.objective.teachers = {None: side}

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:  # fmt: skip
            inputs = {**inputs, "teacher_cache": None}  # takes the distillation path
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return Live


LiveTeacherTrainer: Any = None


def render(results: dict[str, Any]) -> str:
    loop = results["runs"]["cachebrew loop"]["ms_per_step"]
    lines = [
        "| run | ms / step | examples/s | step time vs cachebrew loop |",
        "|---|---:|---:|---:|",
    ]
    for name, run in results["runs"].items():
        lines.append(f"| {name} | {run['ms_per_step']:.0f} | {run['examples_per_s']:.1f} | "
                     f"{run['ms_per_step'] / loop:.3f} |")  # fmt: skip
    return "\n".join(lines)


def _mean(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}


def main() -> None:
    global LiveTeacherTrainer
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--examples", type=int, default=256)
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    teacher, cache = build_inputs(args.examples)
    LiveTeacherTrainer = _live_teacher_trainer()
    loop, trainer = [], []
    for name in ("loop", "trainer", "trainer", "loop"):  # alternating, against drift
        if name == "loop":
            loop.append(cachebrew_loop(cache, teacher, args.steps))
        else:
            trainer.append(trainer_run(cache, teacher, args.steps, live=False))
        print(name, (loop if name == "loop" else trainer)[-1], flush=True)
    runs = {
        "cachebrew loop": _mean(loop),
        "DistillationTrainer (HF Trainer) from the cache": _mean(trainer),
        "HF Trainer with the live teacher": trainer_run(cache, teacher, args.steps, live=True),
    }
    results = {"threads": torch.get_num_threads(), "batch": BATCH, "runs": runs,
               "each": {"cachebrew loop": loop, "trainer": trainer}}  # fmt: skip
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(render(results))


if __name__ == "__main__":
    main()
