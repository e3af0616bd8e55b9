"""A sweep's report: ``cachebrew report SWEEP_DIR``, also written at the end of every sweep.

Writes into SWEEP_DIR:

- ``results.csv`` / ``results.md`` (:mod:`.table`, by the sweep);
- ``report.md`` (:mod:`.document`) referencing the figures beside it (:mod:`.figures`):
  ``quality.png`` (the metric against size and speed), ``curves.png`` (loss and eval curves),
  ``savings.png`` (what the cache saved);
- TensorBoard HParams summaries (:mod:`.hparams`): ``tensorboard --logdir SWEEP_DIR``.

Figures need matplotlib (the ``plot`` extra). Without it the sweep still writes the tables,
``report.md`` (saying so) and the HParams summaries, and logs one line;
``cachebrew report`` stops with that line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from cachebrew.errors import CachebrewError, MissingDependencyError
from cachebrew.runner.report.collect import SweepRecord, read_sweep, save_overrides

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
FIGURES = ("quality", "curves", "savings")

__all__ = ["REPORT_FILE", "FIGURES", "write_report", "write_sweep_report"]


def write_report(
    sweep_dir: str | Path,
    *,
    teacher_eval: str | Path | None = None,
    teacher_name: str = "teacher",
    precompute_seconds: float | None = None,
    require_figures: bool = True,
) -> Path:
    """Write ``report.md``, its figures and the HParams summaries of ``sweep_dir``.

    Args:
        sweep_dir: a sweep's ``--out`` directory (with ``results.csv``).
        teacher_eval: the teacher's ``cachebrew eval --json`` report: its score is the
            figures' reference line.
        teacher_name: the teacher's name in the legend.
        precompute_seconds: the measured teacher pass: the savings figure shows seconds.
        require_figures: raise when matplotlib is missing (else the report says so).

    Returns:
        The path of ``report.md``.

    Raises:
        ConfigError: ``sweep_dir`` is not a sweep directory, a teacher report is unreadable.
        MissingDependencyError: matplotlib is missing and ``require_figures``.
    """
    sweep = read_sweep(sweep_dir, teacher_eval, precompute_seconds, teacher_name)
    figures, problem = _draw(sweep, require_figures)
    from cachebrew.runner.report.hparams import write_hparams

    write_hparams(sweep)
    from cachebrew.runner.report.document import report_markdown

    path = sweep.sweep_dir / REPORT_FILE
    path.write_text(report_markdown(sweep, figures, problem), encoding="utf-8")
    logger.info("report: %s (%d figures)", path, len(figures))
    return path


def write_sweep_report(sweep_dir: str | Path, overrides: Mapping[str, Sequence[str]]) -> None:
    """The end of ``cachebrew sweep``: keep the runs' overrides and write the report.

    A report that cannot be drawn is logged and does not fail the sweep (its runs are done).
    """
    save_overrides(sweep_dir, overrides)
    try:
        write_report(sweep_dir, require_figures=False)
    except CachebrewError as error:
        logger.warning("report not written: %s", error)
    except Exception:  # a bug in the report must not lose a finished sweep's exit status
        logger.exception("report not written")


def _draw(sweep: SweepRecord, require: bool) -> tuple[dict[str, Path], str | None]:
    """The figures (name -> path), or none and the reason when matplotlib is missing."""
    from cachebrew.runner.report import figures  # matplotlib is imported when drawing

    draw = {
        "quality": figures.quality_figure,
        "curves": figures.curves_figure,
        "savings": figures.savings_figure,
    }
    drawn: dict[str, Path] = {}
    if not sweep.finished:
        return drawn, "no run finished"
    try:
        for name in FIGURES:
            drawn[name] = draw[name](sweep, sweep.sweep_dir / f"{name}.png")
    except MissingDependencyError as error:
        return _missing(error, require)
    return drawn, None


def _missing(error: MissingDependencyError, require: bool) -> tuple[dict[str, Path], str]:
    if require:
        raise error
    logger.warning("%s", error)
    return {}, str(error)
