"""Read a sweep directory back: every run's record, KD/no-KD twins, the teacher, what the cache saved.

Sources, all written by the sweep or beside it:

- ``SWEEP_DIR/results.csv``: the runs in sweep-file order, their status and error;
- ``SWEEP_DIR/<run>/metrics.json`` and ``config.yaml``: what each finished run measured and ran;
- ``SWEEP_DIR/overrides.json``: each run's overrides (``key=value``), saved by the sweep;
- ``SWEEP_DIR/<run>/test_eval.json`` (optional): ``cachebrew eval <run> --json`` of the run,
  which gives its inference examples/s (the pipelines write it);
- a teacher's ``cachebrew eval --json`` report and the measured precompute seconds, when given.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cachebrew.errors import CachebrewError, ConfigError
from cachebrew.runner.report.table import RESULTS_CSV

logger = logging.getLogger(__name__)

OVERRIDES_FILE = "overrides.json"
RUN_EVAL_FILE = "test_eval.json"
# Keys that make a run KD or not; twins are runs equal in every other config key.
_KD_KEYS = ("kd", "distill", "out")


@dataclass(frozen=True)
class RunRecord:
    """One run of the sweep as the report sees it.

    Attributes:
        name: the run's name in the sweep file (its folder under SWEEP_DIR).
        status: ``ok`` or ``failed``.
        error: the failure message, or None.
        metrics: the run's ``metrics.json`` ({} when it has none).
        config: the run's ``config.yaml`` ({} when it has none).
        overrides: the run's ``key=value`` overrides in the sweep file.
        inference_per_s: examples/s of ``cachebrew eval`` on the run, when recorded.
    """

    name: str
    status: str
    error: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    inference_per_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when the run finished and wrote its metrics."""
        return self.status == "ok" and bool(self.metrics)

    @property
    def kd(self) -> bool:
        """True when the run trained with the teacher's features."""
        return bool(self.metrics.get("kd", self.config.get("kd", True)))

    @property
    def value(self) -> float | None:
        """The run's primary eval metric (``metrics.json`` ``value``)."""
        value = self.metrics.get("value")
        return float(value) if value is not None else None

    def twin_key(self) -> str:
        """The run's config without its KD keys: KD and no-KD twins share it (a run without
        a config has no twin)."""
        if not self.config:
            return f"run:{self.name}"
        rest = {k: v for k, v in self.config.items() if k not in _KD_KEYS}
        return json.dumps(rest, sort_keys=True, default=str)


@dataclass(frozen=True)
class TeacherRecord:
    """The teacher as ``cachebrew eval --json`` scored it (the figures' reference)."""

    name: str
    metrics: Mapping[str, float]
    params: int | None
    examples_per_s: float | None


@dataclass(frozen=True)
class Savings:
    """Teacher forwards made once into the cache against those an online sweep would make.

    Attributes:
        cache_examples: examples in the cache: one teacher forward each, made once.
        online_forwards: the KD runs' trained examples: one teacher forward each online.
        train_seconds: the runs' measured training seconds (paid either way).
        precompute_seconds: the measured teacher pass, when known.
    """

    cache_examples: int
    online_forwards: int
    train_seconds: float
    precompute_seconds: float | None = None

    @property
    def online_teacher_seconds(self) -> float | None:
        """The online teacher cost at the measured precompute rate (None without it)."""
        if self.precompute_seconds is None or self.cache_examples <= 0:
            return None
        return self.precompute_seconds / self.cache_examples * self.online_forwards


@dataclass(frozen=True)
class SweepRecord:
    """Everything the report draws from one sweep directory."""

    sweep_dir: Path
    runs: tuple[RunRecord, ...]
    teacher: TeacherRecord | None = None
    precompute_seconds: float | None = None

    @property
    def finished(self) -> list[RunRecord]:
        """The runs that finished, in sweep-file order."""
        return [run for run in self.runs if run.ok]

    @property
    def failed(self) -> list[RunRecord]:
        """The runs that did not finish."""
        return [run for run in self.runs if not run.ok]

    @property
    def metric(self) -> str | None:
        """The primary eval metric of the finished runs (the first one named)."""
        return next(
            (str(r.metrics["metric"]) for r in self.finished if r.metrics.get("metric")), None
        )

    def groups(self) -> list[list[RunRecord]]:
        """Finished runs grouped by :meth:`RunRecord.twin_key`, first seen first (KD first)."""
        groups: dict[str, list[RunRecord]] = {}
        for run in self.finished:
            groups.setdefault(run.twin_key(), []).append(run)
        return [sorted(group, key=lambda r: not r.kd) for group in groups.values()]

    def savings(self) -> Savings:
        """What the cache saved this sweep (:class:`Savings`)."""
        runs = self.finished
        cache_examples = max((_cache_examples(r) for r in runs), default=0)
        online = sum(int(r.metrics.get("examples_trained") or 0) for r in runs if r.kd)
        train = sum(float(r.metrics.get("train_seconds") or 0.0) for r in runs)
        return Savings(cache_examples, online, train, self.precompute_seconds)


def read_sweep(
    sweep_dir: str | Path,
    teacher_eval: str | Path | None = None,
    precompute_seconds: float | None = None,
    teacher_name: str = "teacher",
) -> SweepRecord:
    """Read ``sweep_dir`` (module docstring) into a :class:`SweepRecord`.

    Raises:
        ConfigError: ``sweep_dir`` has no ``results.csv`` (not a sweep directory), or the
            teacher report is unreadable.
    """
    sweep_dir = Path(sweep_dir)
    table = sweep_dir / RESULTS_CSV
    if not table.is_file():
        raise ConfigError(f"{sweep_dir}: no {RESULTS_CSV}; give the --out directory of a sweep")
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    overrides = _read_json(sweep_dir / OVERRIDES_FILE) or {}
    runs = tuple(_run_record(sweep_dir, row, overrides.get(row["run"], ())) for row in rows)
    teacher = read_teacher(teacher_eval, teacher_name) if teacher_eval else None
    return SweepRecord(sweep_dir, runs, teacher, precompute_seconds)


def save_overrides(sweep_dir: str | Path, overrides: Mapping[str, Sequence[str]]) -> None:
    """Keep each run's overrides beside the results (the HParams of the report)."""
    path = Path(sweep_dir) / OVERRIDES_FILE
    text = json.dumps({name: list(items) for name, items in overrides.items()}, indent=2)
    path.write_text(text + "\n", encoding="utf-8")


def read_teacher(path: str | Path, name: str = "teacher") -> TeacherRecord:
    """The teacher's ``cachebrew eval --json`` report.

    Raises:
        ConfigError: the file is missing or is not such a report.
    """
    if not Path(path).is_file():
        raise ConfigError(f"--teacher-eval {path}: no such file")
    report = _read_json(Path(path))
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ConfigError(f"--teacher-eval {path}: expected the JSON of `cachebrew eval --json`")
    return TeacherRecord(
        name, report["metrics"], report.get("params"), report.get("examples_per_s")
    )


def read_seconds(value: str) -> float:
    """Seconds given as a number or as a file holding one (``precompute_seconds``).

    Raises:
        ConfigError: neither a number nor a readable file with one.
    """
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    try:
        return float(text.strip())
    except ValueError:
        raise ConfigError(
            f"--precompute-seconds {value!r}: expected seconds or a file holding them"
        ) from None


def _run_record(sweep_dir: Path, row: Mapping[str, str], overrides: Sequence[str]) -> RunRecord:
    run_dir = sweep_dir / row["run"]
    metrics = _read_json(run_dir / "metrics.json") if row.get("status") == "ok" else None
    config = _read_yaml(run_dir / "config.yaml")
    evaluated = _read_json(run_dir / RUN_EVAL_FILE)
    per_s = evaluated.get("examples_per_s") if isinstance(evaluated, dict) else None
    status = row.get("status") or "failed"
    error = row.get("error") or None
    if status == "ok" and not metrics:
        status, error = "failed", f"{run_dir / 'metrics.json'} is missing"
    return RunRecord(
        row["run"], status, error, metrics or {}, config or {}, tuple(overrides), per_s
    )


def _cache_examples(run: RunRecord) -> int:
    """Examples in the run's cache (its manifest), else those it trained and held out."""
    try:
        from cachebrew.cache import open_cache

        return int(open_cache(str(run.metrics["cache"]), verify=False).num_examples)
    except (CachebrewError, KeyError, OSError):
        return int(run.metrics.get("examples") or 0) + int(run.metrics.get("eval_examples") or 0)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        logger.warning("%s: unreadable JSON (%s), ignored", path, error)
        return None


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        logger.warning("%s: unreadable YAML (%s), ignored", path, error)
        return None
