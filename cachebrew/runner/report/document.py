"""``report.md``: the sweep's figures with what they show in numbers, the failed runs and the table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cachebrew.runner.report.collect import SweepRecord
from cachebrew.runner.report.table import RESULTS_MD

CAPTIONS = {
    "quality": "{metric} against parameters and examples/s: one point per run (filled: KD, "
    "open: no KD), twins joined in their colour{teacher}.",
    "curves": "Training loss (faint: every step; bold: smoothed) and eval scores by optimizer "
    "step, every run on shared axes (solid: KD, dashed: no KD).",
    "savings": "Teacher forwards made once into the cache against those the sweep's KD runs "
    "would have made with the teacher online{seconds}.",
}


def report_markdown(
    sweep: SweepRecord, figures: Mapping[str, Path], figure_problem: str | None = None
) -> str:
    """The whole ``report.md`` (figures referenced by their file names, relative)."""
    metric = sweep.metric or "the eval metric"
    runs, failed = len(sweep.runs), len(sweep.failed)
    lines = [
        f"# Sweep report: {sweep.sweep_dir.resolve().parent.name}/{sweep.sweep_dir.name}",
        "",
        f"{runs} runs, {runs - failed} finished, {failed} failed; primary metric: {metric}.",
    ]
    if figure_problem:
        lines += ["", f"Figures not drawn: {figure_problem}"]
    for name, path in figures.items():
        lines += ["", f"![{name}]({path.name})", "", "*" + _caption(sweep, name) + "*"]
    lines += _twins_section(sweep) + _savings_section(sweep) + _failed_section(sweep)
    table = sweep.sweep_dir / RESULTS_MD
    if table.is_file():
        lines += ["", "## Every run", "", table.read_text(encoding="utf-8").rstrip()]
    lines += [
        "",
        "## TensorBoard",
        "",
        f"`tensorboard --logdir {sweep.sweep_dir}`: the HParams tab compares the runs (table and "
        "parallel coordinates: overrides as hparams, final metrics as `sweep/<name>`); the "
        "Scalars tab has every run's curves.",
    ]
    return "\n".join(lines) + "\n"


def _caption(sweep: SweepRecord, name: str) -> str:
    teacher, metric = "", sweep.metric
    if sweep.teacher is not None and metric is not None and metric in sweep.teacher.metrics:
        teacher = f"; dashed: the teacher ({sweep.teacher.metrics[metric]:.4g})"
    savings = sweep.savings()
    seconds = ""
    if savings.online_teacher_seconds is not None:
        seconds = ", in seconds at the measured precompute rate"
    text = CAPTIONS[name].format(metric=sweep.metric or "metric", teacher=teacher, seconds=seconds)
    return text[:1].upper() + text[1:]


def _twins_section(sweep: SweepRecord) -> list[str]:
    pairs = [group for group in sweep.groups() if len(group) == 2 and group[0].kd != group[1].kd]
    if not pairs:
        return []
    metric = sweep.metric or "value"
    lines = ["", "## KD against no KD", "", f"| KD run | no-KD run | {metric} KD | no KD | gain |"]
    lines.append("|---|---|---|---|---|")
    for kd, plain in pairs:
        if kd.value is None or plain.value is None:
            continue
        gain = kd.value - plain.value
        lines.append(
            f"| {kd.name} | {plain.name} | {kd.value:.4f} | {plain.value:.4f} | {gain:+.4f} |"
        )
    return lines


def _savings_section(sweep: SweepRecord) -> list[str]:
    savings = sweep.savings()
    kd_runs = [run.name for run in sweep.finished if run.kd]
    lines = [
        "",
        "## What the cache saved",
        "",
        f"- teacher forwards made once into the cache: {savings.cache_examples:,}",
        f"- teacher forwards an online sweep would make: {savings.online_forwards:,} "
        f"(the examples trained by {len(kd_runs)} KD runs: {', '.join(kd_runs) or 'none'})",
        f"- students' training (measured, paid either way): {savings.train_seconds:,.0f} s",
    ]
    if savings.online_teacher_seconds is not None and savings.precompute_seconds is not None:
        lines.append(
            f"- teacher time: {savings.precompute_seconds:,.0f} s measured once, against "
            f"~{savings.online_teacher_seconds:,.0f} s online (estimated at the measured "
            "precompute rate)"
        )
    else:
        lines.append("- teacher time: give `cachebrew report --precompute-seconds` to see it")
    return lines


def _failed_section(sweep: SweepRecord) -> list[str]:
    if not sweep.failed:
        return []
    lines = ["", "## Failed runs (not in the figures)", ""]
    for run in sweep.failed:
        error = " ".join((run.error or "no metrics.json").split())  # one list item per run
        lines.append(f"- **{run.name}**: {error}")
    return lines
