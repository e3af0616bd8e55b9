"""Evaluate a sweep's final students and its teacher on a test split; write the results table.

    python report.py --sweep out/demo/sweep --teacher out/demo/teacher --cache out/demo/cache \
        --test out/demo/data/test.jsonl --precompute-seconds out/demo/precompute_seconds \
        --out out/demo

Each run's final checkpoint (``RUN_DIR/checkpoints/latest``) is loaded into its student and run
over the test split (tokenized as the runner does, length-bucketed batches of 64), timing the
forward passes after one warm-up batch. Accuracy and macro-F1 come from these predictions (the
runner's own ``value`` is kept as ``runner_value``; both evaluate the same split). Writes:

- ``OUT/results.json``: one row per student run (``student``, ``kd``, ``metric``, ``value``,
  ``macro_f1``, ``params``, ``examples_per_s`` (inference), ``seconds`` (training), ...);
- ``OUT/summary.json``: the teacher row, cache size and the teacher-pass time;
- ``OUT/results.md``: the table (teacher first), also printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from cachebrew import models
from cachebrew.cache.reader import open_cache
from cachebrew.metrics import accuracy, macro_f1, predict
from cachebrew.runner.config import EvalConfig, load_distill_config
from cachebrew.runner.evaluate import corpus_eval_batches
from cachebrew.runner.setup import load_student
from cachebrew.runner.tokens import max_length, resolve_student_tokens

EVAL_BATCH = 64


def timed_predict(loaded: models.LoadedModel, batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, macro-F1 and forward-pass examples/s of ``loaded`` over labelled ``batches``."""
    with torch.inference_mode():  # warm-up batch, not timed
        loaded.model.eval()(**{k: v for k, v in batches[0].items() if k != "labels"})
    start = time.perf_counter()
    pred, gold = predict(loaded.model, loaded.adaptor, batches, "cpu")
    seconds = time.perf_counter() - start
    count = sum(batch["labels"].shape[0] for batch in batches)
    return {
        "accuracy": round(accuracy(pred, gold), 4),
        "macro_f1": round(macro_f1(pred, gold), 4),
        "eval_examples": count,
        "examples_per_s": round(count / seconds, 1),
    }


def evaluate_run(run_dir: Path, test: str, fields: dict[str, str]) -> dict[str, Any]:
    """The row of one finished run: its metrics.json plus a timed test pass of its student."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = load_distill_config(str(run_dir / "config.yaml"), {})
    reader = open_cache(cfg.cache)
    student = load_student(cfg, reader, seed=0)  # the architecture; weights come next
    checkpoints = run_dir / "checkpoints"
    final = checkpoints / (checkpoints / "latest").read_text().strip()
    student.model.load_state_dict(load_file(str(final / "student.safetensors")))
    tokens = resolve_student_tokens(cfg, reader)
    batches, _ = corpus_eval_batches(EvalConfig(data=test, **fields), tokens, max_length(reader))
    scores = timed_predict(student, batches)
    return {
        "student": metrics["run"],
        "student_config": metrics["student"],
        "kd": bool(metrics["kd"]),
        "metric": "accuracy",
        "value": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        "runner_metric": metrics.get("metric"),
        "runner_value": metrics.get("value"),
        "params": metrics["params"],
        "examples_per_s": scores["examples_per_s"],
        "eval_examples": scores["eval_examples"],
        "seconds": round(metrics["seconds"], 1),
        "train_examples_per_s": metrics.get("examples_per_s"),
        "steps": metrics["steps"],
        "seed": cfg.train_config().seed,
    }


def evaluate_teacher(teacher: str, cache: str, test: str, fields: dict[str, str]) -> dict[str, Any]:
    """The teacher's row: test scores, parameters and inference examples/s."""
    reader = open_cache(cache)
    loaded = models.load_model(teacher, role="teacher")
    tokens = resolve_student_tokens(
        load_distill_config(None, {"cache": cache, "student": teacher, "out": "unused"}), reader
    )
    batches, _ = corpus_eval_batches(EvalConfig(data=test, **fields), tokens, max_length(reader))
    scores = timed_predict(loaded, batches)
    return {"student": "teacher", "params": models.count_parameters(loaded.model), **scores}


def cache_bytes(cache: Path) -> int:
    """Bytes on disk of every file under the cache directory."""
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())


def table(teacher: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, teacher first."""
    lines = [
        "| model | KD | test accuracy | test macro-F1 | params | inference ex/s | train s |",
        "|---|---|---|---|---|---|---|",
        f"| teacher (MiniLM-L6 fine-tuned) | - | {teacher['accuracy']:.4f} | "
        f"{teacher['macro_f1']:.4f} | {teacher['params']:,} | {teacher['examples_per_s']:.0f} | - |",
    ]
    for row in rows:
        lines.append(
            f"| {row['student']} | {'yes' if row['kd'] else 'no'} | {row['value']:.4f} | "
            f"{row['macro_f1']:.4f} | {row['params']:,} | {row['examples_per_s']:.0f} | "
            f"{row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--text-field", default="text", help="tokens for tagging")
    parser.add_argument("--label-field", default="label", help="tags for tagging")
    parser.add_argument("--precompute-seconds", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with open(args.sweep / "results.csv", newline="") as f:
        names = [r["run"] for r in csv.DictReader(f) if r["status"] == "ok"]
    fields = {"text_field": args.text_field, "label_field": args.label_field}
    rows = [evaluate_run(args.sweep / name, args.test, fields) for name in names]
    teacher = evaluate_teacher(args.teacher, str(args.cache), args.test, fields)
    summary = {
        "teacher": teacher,
        "test": args.test,
        "cache_bytes": cache_bytes(args.cache),
        "precompute_seconds": (
            float(args.precompute_seconds.read_text()) if args.precompute_seconds else None
        ),
        "sweep_train_seconds": round(sum(r["seconds"] for r in rows), 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = table(teacher, rows)
    footer = (
        f"\ntest split: {args.test} ({teacher['eval_examples']} examples); cache "
        f"{summary['cache_bytes'] / 1e6:.1f} MB; teacher pass (precompute) "
        f"{summary['precompute_seconds']} s; {len(rows)}-student sweep from the cache "
        f"{summary['sweep_train_seconds']} s"
    )
    (args.out / "results.md").write_text(text + "\n" + footer + "\n")
    print(text + "\n" + footer)


if __name__ == "__main__":
    main()
