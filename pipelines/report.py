"""Tabulate a pipeline's test scores: the JSON `cachebrew eval --json` wrote for the teacher and
for every run of the sweep, beside each run's own metrics.json.

    cachebrew eval out/demo/teacher --data out/demo/data/test.jsonl --json > out/demo/teacher_eval.json
    cachebrew eval out/demo/sweep/<run> --data out/demo/data/test.jsonl --json \
        > out/demo/sweep/<run>/test_eval.json                      # every run of results.csv
    python report.py --sweep out/demo/sweep --teacher-eval out/demo/teacher_eval.json \
        --cache out/demo/cache --precompute-seconds out/demo/precompute_seconds --out out/demo

The scores (accuracy, macro-F1, inference examples/s) come from `cachebrew eval` of each run's
``final/``; training time, steps and the run's own eval figure (``runner_value``) from its
metrics.json. Writes:

- ``OUT/results.json``: one row per student run (``student``, ``kd``, ``metric``, ``value``,
  ``macro_f1``, ``params``, ``examples_per_s`` (inference), ``seconds`` (training), ...);
- ``OUT/summary.json``: the teacher row, cache size and the teacher-pass time;
- ``OUT/results.md``: the table (teacher first), also printed.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import yaml

EVAL_FILE = "test_eval.json"


def scores(report: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, macro-F1, examples and inference speed from a `cachebrew eval --json` report."""
    return {
        "accuracy": round(report["metrics"]["accuracy"], 4),
        "macro_f1": round(report["metrics"]["macro_f1"], 4),
        "eval_examples": report["examples"],
        "examples_per_s": round(report["examples_per_s"] or 0.0, 1),
        "params": report["params"],
    }


def run_row(run_dir: Path) -> dict[str, Any]:
    """The row of one finished run: its metrics.json plus its `cachebrew eval` report."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    test = scores(json.loads((run_dir / EVAL_FILE).read_text()))
    return {
        "student": metrics["run"],
        "student_config": metrics["student"],
        "kd": bool(metrics["kd"]),
        "metric": "accuracy",
        "value": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "runner_metric": metrics.get("metric"),
        "runner_value": metrics.get("value"),
        "params": metrics["params"],
        "examples_per_s": test["examples_per_s"],
        "eval_examples": test["eval_examples"],
        "seconds": round(metrics["seconds"], 1),
        "train_examples_per_s": metrics.get("examples_per_s"),
        "steps": metrics["steps"],
        "seed": (config.get("training") or {}).get("seed"),
    }


def teacher_train_seconds(model: str) -> float | None:
    """The fine-tuning time `cachebrew finetune` recorded beside the teacher, if any."""
    record = Path(model) / "finetune_metrics.json"
    return json.loads(record.read_text())["train_seconds"] if record.is_file() else None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def cache_bytes(cache: Path) -> int:
    """Bytes on disk of every file under the cache directory."""
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())


def table(teacher: dict[str, Any], rows: list[dict[str, Any]], teacher_name: str) -> str:
    """The results as a Markdown table, teacher first."""
    lines = [
        "| model | KD | test accuracy | test macro-F1 | params | inference ex/s | train s |",
        "|---|---|---|---|---|---|---|",
        f"| {teacher_name} | - | {teacher['accuracy']:.4f} | "
        f"{teacher['macro_f1']:.4f} | {teacher['params']:,} | {teacher['examples_per_s']:.0f} | "
        f"{_seconds(teacher.get('train_seconds'))} |",
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
    parser.add_argument("--teacher-eval", type=Path, required=True)
    parser.add_argument("--teacher-name", default="teacher (MiniLM-L6 fine-tuned)")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--precompute-seconds", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with open(args.sweep / "results.csv", newline="") as f:
        names = [r["run"] for r in csv.DictReader(f) if r["status"] == "ok"]
    rows = [run_row(args.sweep / name) for name in names]
    teacher_report = json.loads(args.teacher_eval.read_text())
    teacher = {"student": "teacher", **scores(teacher_report)}
    teacher["train_seconds"] = teacher_train_seconds(teacher_report["model"])
    summary = {
        "teacher": teacher,
        "test": teacher_report["data"],
        "cache_bytes": cache_bytes(args.cache),
        "precompute_seconds": (
            float(args.precompute_seconds.read_text()) if args.precompute_seconds else None
        ),
        "sweep_train_seconds": round(sum(r["seconds"] for r in rows), 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = table(teacher, rows, args.teacher_name)
    footer = (
        f"\ntest split: {summary['test']} ({teacher['eval_examples']} examples); cache "
        f"{summary['cache_bytes'] / 1e6:.1f} MB; teacher pass (precompute) "
        f"{summary['precompute_seconds']} s; {len(rows)}-student sweep from the cache "
        f"{summary['sweep_train_seconds']} s"
    )
    (args.out / "results.md").write_text(text + "\n" + footer + "\n")
    print(text + "\n" + footer)


if __name__ == "__main__":
    main()
