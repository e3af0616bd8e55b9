"""``cachebrew sweep``: many students over one cache, each a ``cachebrew distill`` run.

A sweep file::

    base: pipelines/tiny/distill.yaml     # a distill config mapping, or a path to one
    grid:                                  # dotted key -> values; the cartesian product
      student: [students/bert-1l.json, students/bert-2l.json]
      kd: [true, false]
    runs:                                  # and/or explicit runs (each crossed with the grid)
      - name: hot                          # optional; derived from the overrides when absent
        overrides: {distill.temperature: 8}

Relative paths in the sweep file (``base:`` and the path keys of ``base``, ``grid`` and
``runs``) are relative to the sweep file's folder, those inside a ``base`` file to that file's
folder, ``--set`` values to the working directory; every run config holds absolute paths.
Two runs with the same name or the same resolved config are an error.

Run ``<name>`` trains into ``DIR/<name>/`` (its ``out``). Runs go one after another in this
process, or as ``--parallel N`` subprocesses (``python -m cachebrew distill --config
DIR/<name>/config.yaml``, logs in ``DIR/<name>/log.txt``, ``OMP_NUM_THREADS`` split between
them). A failed run is recorded with its error and the others continue. A run whose
``metrics.json`` exists, made with the same resolved config and the same cache manifest, is
skipped (so ``make`` can re-run a sweep cheaply); a stale or unfinished run directory is
cleared and the run redone. At the end the sweep's report is written
(:mod:`cachebrew.runner.report`): ``DIR/results.csv`` and ``DIR/results.md`` with one row per
run, ``DIR/report.md`` with its figures, and TensorBoard HParams summaries under ``DIR``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cachebrew.errors import CachebrewError, ConfigError
from cachebrew.runner import placement
from cachebrew.runner.config import DistillRunConfig, run_length_overrides
from cachebrew.runner.report import write_sweep_report
from cachebrew.runner.report.table import (  # COLUMNS: re-exported, the table's columns
    COLUMNS,  # noqa: F401
    result_columns,
    result_row,
    write_results,
)
from cachebrew.validation import (
    ConfigBase,
    apply_overrides,
    load_yaml_mapping,
    raise_if_any,
    resolve_path,
    resolve_paths,
)

logger = logging.getLogger(__name__)

RUN_FILES = ("checkpoints", "tb", "config.yaml", "metrics.json", "log.txt")


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its name and its config mapping (``out`` not yet set)."""

    name: str
    overrides: tuple[str, ...]
    data: Mapping[str, Any]

    def config(self, sweep_dir: str | Path) -> DistillRunConfig:
        """The validated run config training into ``sweep_dir/<name>`` (made absolute)."""
        out = os.path.abspath(Path(sweep_dir) / self.name)
        return DistillRunConfig.from_dict({**self.data, "out": out})


@dataclass(frozen=True)
class SweepSpec(ConfigBase):
    """The sweep file's three keys (unknown keys are reported with a suggestion)."""

    base: Any = None
    grid: Any = field(default_factory=dict)
    runs: Any = None


def load_sweep(
    path: str | Path, overrides: Sequence[str] = (), defaults: Mapping[str, Any] | None = None
) -> list[SweepRun]:
    """Read a sweep file and expand it into runs; every run's config is validated up front.

    Args:
        path: the sweep YAML.
        overrides: ``key=value`` strings applied to ``base`` first (``--set``), e.g.
            ``cache=out/tiny/cache``.
        defaults: values for keys ``base`` does not give (``precompute --from`` gives ``cache``).

    Raises:
        ConfigError: every problem at once (the sweep file's keys, the grid, the runs, each
            run's config, prefixed with the run name, and runs with the same name or config).
    """
    spec = SweepSpec.from_dict(load_yaml_mapping(path))
    folder = os.path.dirname(path)
    problems: list[str] = []
    base = {**(defaults or {}), **_base_mapping(spec.base, folder, problems)}
    base = resolve_paths(
        apply_overrides(base, run_length_overrides(overrides)), _PATHS, os.getcwd()
    )
    grid = _grid_points(spec.grid, problems)
    named = _explicit_runs(spec.runs, problems)
    raise_if_any(problems)
    runs = []
    for (run_name, run_overrides), point in itertools.product(named, grid):
        items = run_overrides + [_override(k, v) for k, v in point.items()]
        items = [_resolved_override(item, folder) for item in items]
        name = "_".join(p for p in (run_name, derive_name(point)) if p) or "base"
        try:
            config = apply_overrides(base, run_length_overrides(items))
            runs.append(SweepRun(name, tuple(items), config))
        except ConfigError as error:
            problems += [f"run {name}: {p}" for p in error.problems]
    problems += _run_problems(runs)
    raise_if_any(problems)
    return runs


_PATHS = DistillRunConfig.PATH_FIELDS


def _base_mapping(base: Any, folder: str, problems: list[str]) -> dict[str, Any]:
    if isinstance(base, str):
        base_path = resolve_path(base, folder)
        return resolve_paths(load_yaml_mapping(base_path), _PATHS, os.path.dirname(base_path))
    if isinstance(base, Mapping):
        return resolve_paths(base, _PATHS, folder)
    problems.append(f"base: expected a distill config mapping or a path to one, got {base!r}")
    return {}


def _grid_points(grid: Any, problems: list[str]) -> list[dict[str, Any]]:
    if grid is None:
        return [{}]
    if not isinstance(grid, Mapping):
        problems.append(f"grid: expected a mapping of dotted key -> list of values, got {grid!r}")
        return [{}]
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            problems.append(f"grid.{key}: expected a non-empty list of values, got {values!r}")
    if any(not isinstance(v, list) or not v for v in grid.values()):
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _explicit_runs(runs: Any, problems: list[str]) -> list[tuple[str, list[str]]]:
    if runs is None:
        return [("", [])]
    if not isinstance(runs, list) or not runs:
        problems.append(f"runs: expected a non-empty list of {{name, overrides}}, got {runs!r}")
        return [("", [])]
    named = []
    for i, run in enumerate(runs):
        extra = sorted(set(run) - {"name", "overrides"}) if isinstance(run, Mapping) else None
        if extra is None or extra:
            problems.append(f"runs[{i}]: expected {{name, overrides}}, got {run!r}")
            continue
        overrides = run.get("overrides") or {}
        if isinstance(overrides, Mapping):
            items = [_override(k, v) for k, v in overrides.items()]
        elif isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
            items = list(overrides)
        else:
            problems.append(f"runs[{i}].overrides: expected a mapping or key=value strings")
            continue
        name = run.get("name") or derive_name(dict(o.partition("=")[::2] for o in items))
        named.append((str(name), items))
    return named


def _resolved_override(item: str, folder: str) -> str:
    """A ``key=value`` of the sweep file with a relative path value resolved against ``folder``."""
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return item  # apply_overrides reports it
    resolved = resolve_paths({key.strip(): value}, _PATHS, folder)[key.strip()]
    return item if resolved == value else _override(key.strip(), resolved)


def _run_problems(runs: Sequence[SweepRun]) -> list[str]:
    problems = []
    seen: dict[str, str] = {}  # resolved config -> the first run with it
    names = [run.name for run in runs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"run {name}: {names.count(name)} runs have this name; give the runs names")
    for run in runs:
        try:
            resolved = {**run.config("sweep").to_dict(), "out": None}  # out differs by name
            text = json.dumps(resolved, sort_keys=True, default=str)
        except ConfigError as error:
            problems += [f"run {run.name}: {p}" for p in error.problems]
            continue
        if text in seen and seen[text] != run.name:
            problems.append(f"runs {seen[text]} and {run.name} have identical configs; drop one")
        seen.setdefault(text, run.name)
    return problems


def _override(key: str, value: Any) -> str:
    """``key=value`` with the value written as YAML (parsed back by ``apply_overrides``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**16).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def derive_name(overrides: Mapping[str, Any]) -> str:
    """A directory name from overrides: ``student=s/bert-1l.json, kd=False`` -> ``bert-1l_kd-false``.

    Path-like values give their stem alone; other values ``<last key part>-<value>``.
    """
    parts = []
    for key, value in overrides.items():
        short_key = str(key).rsplit(".", 1)[-1]
        if isinstance(value, str) and ("/" in value or Path(value).suffix):
            parts.append(Path(value).stem)
            continue
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        parts.append(f"{short_key}-{text.lower() if isinstance(value, bool) else text}")
    return re.sub(r"[^A-Za-z0-9._=-]+", "", "_".join(parts))


# ------------------------------------------------------------------------------------ running


def run_sweep(
    runs: Sequence[SweepRun],
    out: str | Path,
    *,
    parallel: int = 1,
    progress: bool = True,
    devices: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Run (or skip) every run; write the tables and the report; return the rows.

    ``devices`` (``--devices``, :mod:`~cachebrew.runner.placement`): one subprocess per device
    slot at a time, each pinned to its device with a fair share of the CPU threads.
    """
    sweep_dir = Path(out)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for run in runs:
        cfg = run.config(sweep_dir)
        done = finished_metrics(cfg)
        if done is not None:
            logger.info("run %s: up to date, skipped", run.name)
            results[run.name] = done
        else:
            clear_run_dir(cfg.run_dir)
            pending.append(cfg)
    if devices:
        for cfg, metrics in zip(pending, _run_on_devices(pending, devices), strict=True):
            results[cfg.run_dir.name] = metrics
    elif parallel > 1 and len(pending) > 1:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            threads = _threads_per_run(parallel)
            for cfg, metrics in zip(
                pending, pool.map(lambda c: _run_subprocess(c, threads), pending), strict=True
            ):
                results[cfg.run_dir.name] = metrics
    else:
        for i, cfg in enumerate(pending, 1):
            logger.info("run %d/%d: %s", i, len(pending), cfg.run_dir.name)
            results[cfg.run_dir.name] = _run_in_process(cfg, progress)
    rows = [result_row(run.name, results[run.name]) for run in runs]
    write_results(rows, sweep_dir, result_columns(results.values()))
    write_sweep_report(sweep_dir, {run.name: run.overrides for run in runs})
    return rows


def finished_metrics(cfg: DistillRunConfig) -> dict[str, Any] | None:
    """The run's metrics if it finished with this config on the current cache, else None."""
    metrics_path, config_path = cfg.run_dir / "metrics.json", cfg.run_dir / "config.yaml"
    if not metrics_path.is_file() or not config_path.is_file():
        return None
    if yaml.safe_load(config_path.read_text(encoding="utf-8")) != cfg.to_portable_dict():
        return None
    metrics: dict[str, Any] = json.loads(metrics_path.read_text(encoding="utf-8"))
    try:
        from cachebrew.cache import open_cache
        from cachebrew.cache.format.manifest import manifest_digest

        current = manifest_digest(open_cache(cfg.cache, verify=False).manifest)
    except CachebrewError:
        return None
    return metrics if metrics.get("cache_manifest_sha256") == current else None


def clear_run_dir(run_dir: Path) -> None:
    """Remove what an earlier (stale or unfinished) run left; other files are kept."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _run_in_process(cfg: DistillRunConfig, progress: bool) -> dict[str, Any]:
    from cachebrew.runner.run import run_distill

    try:
        return run_distill(cfg, progress=progress)
    except CachebrewError as error:
        logger.error("run %s failed: %s", cfg.run_dir.name, error)
        return _failed(cfg, str(error))
    except Exception as error:  # a bug in one run must not stop the sweep
        logger.exception("run %s failed", cfg.run_dir.name)
        return _failed(cfg, f"{type(error).__name__}: {error}")


def _threads_per_run(parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // parallel)


def _run_on_devices(
    pending: Sequence[DistillRunConfig], devices: Sequence[str]
) -> list[dict[str, Any]]:
    placement.check_runs_fit(pending, devices)
    slots = placement.DeviceSlots(devices)
    threads = placement.threads_per_slot(len(devices))

    def run(cfg: DistillRunConfig) -> dict[str, Any]:
        with slots.take() as device:
            logger.info("run %s: on %s, %d threads", cfg.run_dir.name, device, threads)
            return _run_subprocess(cfg, threads, placement.placement_env(device, threads))

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        return list(pool.map(run, pending))


def _run_subprocess(
    cfg: DistillRunConfig, threads: int, pinned: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``python -m cachebrew distill`` on the run's config.yaml; output in log.txt.

    ``pinned``: environment variables that place the run (``--devices``); they win over the
    sweep's own environment.
    """
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    config_path = cfg.run_dir / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(cfg.to_portable_dict(), sort_keys=False), encoding="utf-8"
    )
    command = [sys.executable, "-m", "cachebrew", "distill", "--config", str(config_path)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    env.update(pinned or {})
    # Not --quiet: the log keeps the run's info lines; no bar is drawn into a file.
    with open(cfg.run_dir / "log.txt", "w", encoding="utf-8") as log:
        code = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode
    metrics_path = cfg.run_dir / "metrics.json"
    if code == 0 and metrics_path.is_file():
        logger.info("run %s: done", cfg.run_dir.name)
        return dict(json.loads(metrics_path.read_text(encoding="utf-8")))
    lines = (cfg.run_dir / "log.txt").read_text(encoding="utf-8").splitlines()
    errors = [line for line in lines if line.startswith("error:")] or lines[-1:]
    message = errors[-1].removeprefix("error:").strip() if errors else f"exit code {code}"
    logger.error("run %s failed: %s", cfg.run_dir.name, message)
    return _failed(cfg, message)


def _failed(cfg: DistillRunConfig, error: str) -> dict[str, Any]:
    return {
        "student": cfg.student,
        "kd": cfg.distill_config is not None,
        "status": "failed",
        "error": error,
    }
