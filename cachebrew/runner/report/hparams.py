"""TensorBoard HParams summaries of a sweep: ``tensorboard --logdir SWEEP_DIR`` compares its runs.

Each run's ``RUN_DIR/tb`` (where it logged its scalars) gets one more event file, ``*.hparams``,
with the plugin's session start info (the run's overrides as hparams, named as in the sweep
file; a key one run overrides is shown for every run, from its config; a sweep without
``overrides.json`` shows the config keys that differ between runs), its final metrics as
``sweep/<name>`` scalars, and a session end (failed runs end with ``STATUS_FAILURE``). The sweep
directory itself gets the experiment summary: every hparam with its values and every metric,
so the HParams dashboard's table and parallel-coordinates view list them in this order.
Re-writing the report replaces the ``*.hparams`` files.

The protos come from :mod:`tensorboard.plugins.hparams.summary_v2` (no TensorFlow needed);
torch's event writer writes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cachebrew.runner.report.collect import RunRecord, SweepRecord

SUFFIX = ".hparams"
METRIC_PREFIX = "sweep/"
# metrics.json keys shown as metrics beside every eval metric (in this order)
RUN_METRICS = ("final_loss", "params", "examples_per_s", "train_seconds", "steps")
_LONGEST_VALUE = 60  # longer list/dict values are cut and tagged with a hash


def write_hparams(sweep: SweepRecord) -> list[Path]:
    """Write the HParams summaries of every run and the experiment; return the event files."""
    from tensorboard.plugins.hparams import summary_v2

    hparams = {run.name: run_hparams(run, _override_keys(sweep)) for run in sweep.runs}
    domains = _domains(hparams)
    metric_names = _metric_names(sweep)
    written = []
    for run in sweep.runs:
        values = {k: str(v) if isinstance(domains[k][0], str) else v
                  for k, v in hparams[run.name].items()}  # fmt: skip
        log_dir = sweep.sweep_dir / run.name / "tb"
        written.append(_write_session(run, values, metric_names, log_dir))
    infos = [
        summary_v2.HParam(key, summary_v2.Discrete(values)) if values else summary_v2.HParam(key)
        for key, values in domains.items()
    ]
    metrics = [summary_v2.Metric(METRIC_PREFIX + name, display_name=name) for name in metric_names]
    experiment = summary_v2.hparams_config_pb(infos, metrics, time_created_secs=time.time())
    written.append(_write_event_file(sweep.sweep_dir, [experiment], {}, 0))
    return written


def run_hparams(run: RunRecord, keys: list[str]) -> dict[str, bool | float | str]:
    """The run's value of every overridden key: its config's, else its override's."""
    overrides = dict(_parse(item) for item in run.overrides)
    values: dict[str, bool | float | str] = {}
    for key in keys:
        found, value = _lookup(run.config, key)
        if not found and key in overrides:
            found, value = True, overrides[key]
        if found:
            values[key] = hparam_value(value)
    return values


def hparam_value(value: Any) -> bool | float | str:
    """A value TensorBoard can show: bools and numbers as they are, paths by their file name,
    lists and mappings as compact JSON (cut, with a hash to keep them apart, past 60 chars)."""
    if isinstance(value, bool | int | float):
        return value
    if value is None:
        return "null"
    if isinstance(value, str):
        return Path(value).name if value.startswith("/") else value
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) <= _LONGEST_VALUE:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: _LONGEST_VALUE - 12]}... #{digest}"


def run_metrics(run: RunRecord) -> dict[str, float]:
    """The run's final numbers: every eval metric, then :data:`RUN_METRICS` it has."""
    values = dict(run.metrics.get("eval_metrics") or {})
    if run.metrics.get("metric") and run.value is not None:
        values.setdefault(str(run.metrics["metric"]), run.value)
    for name in RUN_METRICS:
        if run.metrics.get(name) is not None:
            values[name] = run.metrics[name]
    return {name: float(value) for name, value in values.items() if value is not None}


def _write_session(
    run: RunRecord, hparams: Mapping[str, Any], metric_names: list[str], log_dir: Path
) -> Path:
    from tensorboard.plugins.hparams import api_pb2, summary_v2

    start = summary_v2.hparams_pb(hparams, trial_id=run.name, start_time_secs=time.time())
    status = api_pb2.STATUS_SUCCESS if run.ok else api_pb2.STATUS_FAILURE
    metrics = {k: v for k, v in run_metrics(run).items() if k in metric_names}
    step = int(run.metrics.get("steps") or 0)
    return _write_event_file(log_dir, [start, _session_end(status)], metrics, step)


def _session_end(status: int) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(
            plugin_data_pb2.HParamsPluginData(session_end_info=end)
        ),
        tensor=metadata.NULL_TENSOR,
    )
    return summary


def _write_event_file(
    log_dir: Path, summaries: list[Any], metrics: Mapping[str, float], step: int
) -> Path:
    """One ``*.hparams`` event file in ``log_dir`` (the previous one removed)."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob(f"*{SUFFIX}"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(log_dir), filename_suffix=SUFFIX)
    try:
        file_writer: Any = writer.file_writer  # made by the constructor
        for summary in summaries:
            file_writer.add_summary(summary)
        for name, value in metrics.items():
            writer.add_scalar(METRIC_PREFIX + name, value, step)
    finally:
        writer.close()
    return next(log_dir.glob(f"*{SUFFIX}"))


def _override_keys(sweep: SweepRecord) -> list[str]:
    """Every key some run overrides, first seen first; for a sweep that kept no overrides
    (made before ``overrides.json``), every config key whose value differs between runs."""
    keys: dict[str, None] = {}
    for run in sweep.runs:
        keys.update(dict.fromkeys(_parse(item)[0] for item in run.overrides))
    if keys:
        return list(keys)
    flat = [_flatten(run.config) for run in sweep.runs if run.config]
    for key in (k for config in flat for k in config if k != "out"):
        if len({json.dumps(c.get(key), sort_keys=True, default=str) for c in flat}) > 1:
            keys[key] = None
    return list(keys)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 1e-3}}`` -> ``{"optimizer.lr": 1e-3}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _metric_names(sweep: SweepRecord) -> list[str]:
    names: dict[str, None] = {}
    for run in sweep.finished:
        names.update(dict.fromkeys(run_metrics(run)))
    return list(names)


def _domains(hparams: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Every hparam's values (sorted); a key with values of mixed types gets them as text."""
    domains: dict[str, list[Any]] = {}
    for run_values in hparams.values():
        for key, value in run_values.items():
            seen = domains.setdefault(key, [])
            if not any(type(v) is type(value) and v == value for v in seen):  # True is not 1
                seen.append(value)
    for key, values in domains.items():
        kinds = {
            bool if isinstance(v, bool) else float if isinstance(v, int | float) else str
            for v in values
        }
        if len(kinds) > 1 or kinds == {str}:
            domains[key] = sorted({str(v) for v in values})
        elif kinds == {float}:
            domains[key] = sorted({float(v) for v in values})
    return domains


def _parse(item: str) -> tuple[str, Any]:
    key, _, raw = item.partition("=")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return key.strip(), raw


def _lookup(config: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node
