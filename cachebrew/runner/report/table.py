"""A sweep's tables: ``results.csv`` (full values) and ``results.md`` (rounded), one row per run.

The columns are :data:`COLUMNS`, with one column per eval metric any run reported inserted
after ``value``: ``metric``/``value`` are each run's primary metric, the others every metric
of its eval. A failed run's row has ``status: failed`` and its ``error``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
COLUMNS = (
    "run", "student", "kd", "metric", "value", "params", "steps", "final_loss", "seconds",
    "examples_per_s", "teacher_forwards", "status", "error",
)  # fmt: skip


def result_columns(runs_metrics: Iterable[Mapping[str, Any]]) -> list[str]:
    """:data:`COLUMNS` with every eval metric of any run (first seen first) after ``value``."""
    names: dict[str, None] = {}
    for metrics in runs_metrics:
        names.update(dict.fromkeys(metrics.get("eval_metrics") or {}))
    cut = COLUMNS.index("value") + 1
    return [*COLUMNS[:cut], *names, *COLUMNS[cut:]]


def result_row(name: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One results row (:data:`COLUMNS` and the run's eval metrics) from a run's metrics (or
    failure record)."""
    row = {column: metrics.get(column) for column in COLUMNS}
    row["run"] = name
    row["student"] = _shown_path(row["student"])
    row["status"] = metrics.get("status", "ok")
    for metric, value in (metrics.get("eval_metrics") or {}).items():
        row.setdefault(metric, value)
    return row


def _shown_path(value: Any) -> Any:
    """An absolute path under the working directory shown relative to it (shorter tables)."""
    if isinstance(value, str) and os.path.isabs(value):
        relative = os.path.relpath(value)
        return value if relative.startswith("..") else relative
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_results(
    rows: Sequence[Mapping[str, Any]], sweep_dir: Path, columns: Sequence[str] = COLUMNS
) -> None:
    """``results.csv`` (full values) and ``results.md`` (a table, rounded) of ``columns``."""
    with open(sweep_dir / RESULTS_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) if isinstance(v, bool) else v for k, v in row.items()})
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
        *("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows),
    ]
    (sweep_dir / RESULTS_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")
