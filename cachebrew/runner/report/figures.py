"""The sweep report's figures (PNG, matplotlib through :mod:`cachebrew.plotting`).

- :func:`quality_figure`: the primary metric against parameters, training examples/s and (when
  recorded) inference examples/s; one point per run, KD filled and no-KD open, twins joined
  by a line in their shared colour, the teacher as a dashed reference line;
- :func:`curves_figure`: every run's training loss (raw and smoothed) and eval scores by step;
- :func:`savings_figure`: teacher forwards made once into the cache against those an online
  sweep would make, in seconds when the precompute time was measured.

Runs keep the names of the sweep file; the legend sits below the axes so no label covers a
point. Failed runs are not drawn; the figure says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cachebrew.plotting import pyplot, save_figure
from cachebrew.runner.report.collect import RunRecord, Savings, SweepRecord

TEACHER_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.3}
XOf = Callable[[RunRecord], float | None]


def _panels(sweep: SweepRecord) -> list[tuple[str, XOf]]:
    """(x label, x of a run) of each quality panel that has a value for some run."""
    params = [float(r.metrics.get("params") or 0) for r in sweep.finished]
    unit, scale = ("millions", 1e-6) if max(params, default=0) >= 1e6 else ("thousands", 1e-3)
    panels: list[tuple[str, XOf]] = [
        (f"parameters ({unit})", lambda r: _num(r.metrics.get("params"), scale)),
        ("training examples/s", lambda r: _num(r.metrics.get("examples_per_s"))),
        ("inference examples/s (cachebrew eval)", lambda r: _num(r.inference_per_s)),
    ]
    shown = [p for p in panels if any(p[1](r) is not None for r in sweep.finished)]
    return shown or panels[:1]


def quality_figure(sweep: SweepRecord, path: Path) -> Path:
    """The primary metric against size and speed (module docstring); returns ``path``."""
    plt = pyplot()
    metric = sweep.metric or "metric"
    axes_spec = _panels(sweep)
    figure, axes = plt.subplots(1, len(axes_spec), figsize=(4.6 * len(axes_spec), 4.3), sharey=True)
    axes = list(axes) if len(axes_spec) > 1 else [axes]
    handles: dict[str, Any] = {}
    for axis, (label, x_of) in zip(axes, axes_spec, strict=True):
        for color, group in zip(_colors(plt, sweep), sweep.groups(), strict=True):
            _twins(axis, group, x_of, color, handles)
        _teacher_reference(axis, sweep, label, handles)
        axis.set_xlabel(label)
        _readable_scale(axis, [x_of(r) for r in sweep.finished])
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric} (eval)")
    figure.suptitle(f"{metric} against size and speed (filled: KD, open: no KD)")
    _legend(figure, handles, _failed_note(sweep))
    return save_figure(figure, path)


def curves_figure(sweep: SweepRecord, path: Path) -> Path:
    """Training loss and eval scores of every run by optimizer step; returns ``path``."""
    plt = pyplot()
    figure, (loss_axis, eval_axis) = plt.subplots(1, 2, figsize=(11.5, 4.3), sharex=True)
    handles: dict[str, Any] = {}
    for color, group in zip(_colors(plt, sweep), sweep.groups(), strict=True):
        for run in group:
            style = {"color": color, "linestyle": "-" if run.kd else "--"}
            _loss_curve(loss_axis, run, style, handles)
            _eval_curve(eval_axis, run, style)
    last_step = max((int(r.metrics.get("steps") or 0) for r in sweep.finished), default=0)
    loss_axis.set(xlabel="optimizer step", ylabel="training loss", xlim=(0, last_step * 1.04 + 1))
    loss_axis.set_title("loss: each run's own objective (KD terms or labels)", fontsize=10)
    metric = sweep.metric or "metric"
    eval_axis.set(xlabel="optimizer step", ylabel=f"{metric} (eval)")
    during = any(len(r.metrics.get("eval_curve") or []) > 1 for r in sweep.finished)
    title = "eval during training and at the end" if during else "eval at the end of each run"
    eval_axis.set_title(
        title + ("" if during else " (eval.every_steps: N adds a curve)"), fontsize=10
    )
    if sweep.teacher is not None and metric in sweep.teacher.metrics:
        line = eval_axis.axhline(sweep.teacher.metrics[metric], **TEACHER_STYLE)
        handles[sweep.teacher.name] = line
    for axis in (loss_axis, eval_axis):
        axis.grid(alpha=0.3)
    figure.suptitle("every run on shared axes (solid: KD, dashed: no KD)")
    _legend(figure, handles, _failed_note(sweep))
    return save_figure(figure, path)


def savings_figure(sweep: SweepRecord, path: Path) -> Path:
    """The cache's teacher pass against the online cost, as two bars; returns ``path``."""
    plt = pyplot()
    savings = sweep.savings()
    figure, axis = plt.subplots(figsize=(7.2, 4.8))
    bars, totals, notes = _savings_bars(axis, savings)
    for bar, total, note in zip(bars, totals, notes, strict=True):
        axis.annotate(note, (bar.get_x() + bar.get_width() / 2, total), ha="center",
                      va="bottom", xytext=(0, 3), textcoords="offset points", fontsize=9)  # fmt: skip
    axis.set_ylim(0, max(totals + [1.0]) * 1.3)
    axis.set_title(_savings_title(savings.cache_examples, savings.online_forwards), fontsize=11)
    axis.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def _savings_bars(axis: Any, savings: Savings) -> tuple[Any, list[float], list[str]]:
    """Forwards (no measured precompute) or seconds stacked on the students' training."""
    names = ["cache: teacher once\n(this sweep)", "online teacher\n(estimated)"]
    forwards = [savings.cache_examples, savings.online_forwards]
    online_seconds = savings.online_teacher_seconds
    if online_seconds is None or savings.precompute_seconds is None:
        bars = axis.bar(names, forwards, color=["tab:green", "tab:red"], width=0.55)
        axis.set_ylabel("teacher forward passes (examples)")
        return bars, [float(f) for f in forwards], [f"{f:,} teacher forwards" for f in forwards]
    teacher = [savings.precompute_seconds, online_seconds]
    bars = axis.bar(names, teacher, color=["tab:green", "tab:red"], width=0.55)
    axis.bar(names, [savings.train_seconds] * 2, bottom=teacher, color="0.82", width=0.55)
    axis.set_ylabel("wall time (s)")
    totals = [t + savings.train_seconds for t in teacher]
    notes = [
        f"total {total:,.0f} s\nteacher: {f:,} forwards, {t:,.0f} s"
        for total, f, t in zip(totals, forwards, teacher, strict=True)
    ]
    _savings_legend(axis)
    return bars, totals, notes


# ------------------------------------------------------------------------------------ helpers


def _twins(
    axis: Any, group: Sequence[RunRecord], x_of: Callable, color: Any, handles: dict
) -> None:
    """One point per run of a twin group, joined by a thin line."""
    points = [(x_of(r), r.value, r) for r in group]
    points = [(x, y, r) for x, y, r in points if x is not None and y is not None]
    if len(points) > 1:
        axis.plot([p[0] for p in points], [p[1] for p in points], color=color, alpha=0.5, lw=1.5)
    for x, y, run in points:  # a KD dot drawn inside its twin's ring when they coincide
        face, size, order = (color, 60, 4) if run.kd else ("white", 150, 3)
        handles[run.name] = axis.scatter(
            [x], [y], s=size, marker="o", facecolors=[face], edgecolors=[color], linewidths=2,
            zorder=order, label=run.name,
        )  # fmt: skip


def _teacher_reference(axis: Any, sweep: SweepRecord, label: str, handles: dict) -> None:
    teacher, metric = sweep.teacher, sweep.metric
    if teacher is None or metric is None or metric not in teacher.metrics:
        return
    value = float(teacher.metrics[metric])
    handles[f"{teacher.name} ({metric} {value:.4g})"] = axis.axhline(value, **TEACHER_STYLE)
    x = None
    if label.startswith("parameters"):
        x = _num(teacher.params, 1e-6 if "millions" in label else 1e-3)
    elif label.startswith("inference"):
        x = _num(teacher.examples_per_s)
    if x is not None:
        axis.scatter([x], [value], marker="*", s=160, color=TEACHER_STYLE["color"], zorder=3)


def _loss_curve(axis: Any, run: RunRecord, style: dict, handles: dict) -> None:
    curve = [float(v) for v in run.metrics.get("loss_curve") or [] if v is not None]
    if not curve:
        return
    first = int(run.metrics.get("steps") or len(curve)) - len(curve) + 1
    steps = list(range(first, first + len(curve)))
    axis.plot(steps, curve, color=style["color"], alpha=0.18, linewidth=0.8)
    (line,) = axis.plot(steps, _smooth(curve), linewidth=2, label=run.name, **style)
    handles[run.name] = line


def _eval_curve(axis: Any, run: RunRecord, style: dict) -> None:
    metric = run.metrics.get("metric")
    points = [(p["step"], p[metric]) for p in run.metrics.get("eval_curve") or [] if metric in p]
    if run.value is not None and run.metrics.get("steps"):
        final = (int(run.metrics["steps"]), run.value)
        points = [p for p in points if p[0] != final[0]] + [final]
    if points:
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=8,
                  markerfacecolor=style["color"] if run.kd else "white", linewidth=1.8, **style)  # fmt: skip


def _savings_legend(axis: Any) -> None:
    from matplotlib.patches import Patch

    parts = [("tab:green", "teacher pass into the cache (measured)"),
             ("tab:red", "teacher forwards online (at the measured rate)"),
             ("0.82", "students' training (measured, paid either way)")]  # fmt: skip
    handles = [Patch(color=color, label=label) for color, label in parts]
    axis.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=9,
                frameon=False)  # fmt: skip


def _smooth(values: Sequence[float]) -> list[float]:
    """Exponential moving average over ~1/20 of the curve (raw values drawn faintly beside)."""
    alpha = min(1.0, 20.0 / max(1, len(values)))
    smoothed, last = [], values[0]
    for value in values:
        last = alpha * value + (1 - alpha) * last
        smoothed.append(last)
    return smoothed


def _colors(plt: Any, sweep: SweepRecord) -> list[Any]:
    """One colour per twin group (tab10, then cycling)."""
    palette = plt.get_cmap("tab10").colors
    return [palette[i % len(palette)] for i in range(len(sweep.groups()))]


def _readable_scale(axis: Any, values: Sequence[float | None]) -> None:
    """Log x when values span more than 8x; plain numbers on the ticks either way."""
    present = [v for v in values if v is not None and v > 0]
    if present and max(present) / min(present) > 8:
        axis.set_xscale("log")
        _plain_log_ticks(axis.xaxis)
    axis.margins(x=0.15, y=0.12)


def _plain_log_ticks(axis: Any) -> None:
    """Ticks at 1, 2, 5 x 10^k written ``20``, ``500``, ``0.5`` (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend(figure: Any, handles: dict[str, Any], note: str) -> None:
    """The runs' names below the axes, in as many columns as fit."""
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="lower center",
                      ncol=min(len(handles), 5), frameon=False, bbox_to_anchor=(0.5, -0.02))  # fmt: skip
    if note:
        figure.text(0.5, -0.08, note, ha="center", fontsize=9, color="tab:red")
    figure.tight_layout(rect=(0, 0.1, 1, 1))


def _failed_note(sweep: SweepRecord) -> str:
    failed = [run.name for run in sweep.failed]
    return f"not drawn (failed): {', '.join(failed)}" if failed else ""


def _savings_title(cache_examples: int, online: int) -> str:
    if not cache_examples or not online:
        return "teacher forwards: the cache's single pass (no KD run read it)"
    return f"the cache ran the teacher once: {online / cache_examples:.1f}x fewer forwards"


def _num(value: Any, scale: float = 1.0) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value) * scale
