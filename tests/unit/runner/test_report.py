"""The sweep report from a sweep directory written by hand (no training): figures are valid PNGs
the Markdown references, a failed run is marked and the others drawn, a missing matplotlib is
one line, and the HParams summaries read back with TensorBoard's event reader."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cachebrew.cli import app
from cachebrew.errors import MissingDependencyError
from cachebrew.runner.report import FIGURES, write_report, write_sweep_report
from cachebrew.runner.report.collect import read_sweep, save_overrides
from cachebrew.runner.report.hparams import METRIC_PREFIX, write_hparams
from cachebrew.runner.report.table import result_columns, result_row, write_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OVERRIDES = {
    "small-kd": [],
    "small-nokd": ["kd=false"],
    "wide-kd": ["student=/students/wide.json", "optimizer.lr=0.001"],
    "wide-nokd": ["student=/students/wide.json", "optimizer.lr=0.001", "kd=false"],
    "broken": ["distill.temperature=0"],
}


def _run(name: str, kd: bool, params: int, value: float, steps: int) -> dict[str, Any]:
    curve = [2.0 / (1 + 0.05 * s) + 0.02 * (s % 3) for s in range(steps)]
    return {
        "run": name, "status": "ok", "student": f"/students/{name.split('-')[0]}.json",
        "kd": kd, "mode": "cache" if kd else "labels", "cache": "/nowhere/cache",
        "examples": 64, "eval_examples": 16, "steps": steps, "final_loss": curve[-1],
        "loss_curve": curve, "examples_trained": steps * 8, "examples_per_s": 40.0 * 1e6 / params,
        "teacher_forwards": 0, "params": params, "seconds": steps * 0.2,
        "train_seconds": steps * 0.1, "metric": "accuracy", "value": value,
        "eval_metrics": {"accuracy": value, "macro_f1": value - 0.05},
        "eval_curve": [{"step": steps // 2, "accuracy": value - 0.1, "macro_f1": value - 0.15}],
    }  # fmt: skip


def _config(name: str, kd: bool) -> dict[str, Any]:
    student = "/students/wide.json" if name.startswith("wide") else "/students/small.json"
    lr = 0.001 if name.startswith("wide") else 1e-4
    return {
        "cache": "/nowhere/cache", "student": student, "out": f"/sweep/{name}", "kd": kd,
        "distill": {"temperature": 8}, "optimizer": {"lr": lr}, "batch_size": 8,
    }  # fmt: skip


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """Four finished runs (two KD/no-KD twins) and one failed run, as a sweep leaves them."""
    out = tmp_path / "sweep"
    runs = {
        "small-kd": _run("small-kd", True, 1_200_000, 0.81, 30),
        "small-nokd": _run("small-nokd", False, 1_200_000, 0.74, 30),
        "wide-kd": _run("wide-kd", True, 9_500_000, 0.86, 60),
        "wide-nokd": _run("wide-nokd", False, 9_500_000, 0.83, 60),
    }
    for name, metrics in runs.items():
        (out / name).mkdir(parents=True)
        (out / name / "metrics.json").write_text(json.dumps(metrics))
        (out / name / "config.yaml").write_text(yaml.safe_dump(_config(name, metrics["kd"])))
    (out / "wide-kd" / "test_eval.json").write_text(json.dumps({"examples_per_s": 310.5}))
    runs["broken"] = {"kd": True, "status": "failed", "error": "temperature: expected > 0"}
    rows = [result_row(name, metrics) for name, metrics in runs.items()]
    write_results(rows, out, result_columns(runs.values()))
    save_overrides(out, OVERRIDES)
    return out


@pytest.fixture
def teacher_eval(tmp_path: Path) -> Path:
    path = tmp_path / "teacher_eval.json"
    report = {"metrics": {"accuracy": 0.9, "macro_f1": 0.88}, "params": 22_000_000}
    path.write_text(json.dumps({**report, "examples_per_s": 95.0, "model": "t"}))
    return path


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_figures_are_pngs_the_markdown_references(
    sweep_dir: Path, teacher_eval: Path
) -> None:
    path = write_report(sweep_dir, teacher_eval=teacher_eval, precompute_seconds=12.0)
    text = path.read_text()
    for name in FIGURES:
        figure = sweep_dir / f"{name}.png"
        width, height = _png_size(figure)
        assert 500 <= width <= 2000 and 250 <= height <= 1200, (name, width, height)
        assert 10_000 < figure.stat().st_size < 400_000
        assert f"![{name}]({name}.png)" in text
    # the twins' gains, the savings in numbers, the failed run marked, the table, TensorBoard
    assert "| small-kd | small-nokd | 0.8100 | 0.7400 | +0.0700 |" in text
    assert "teacher forwards an online sweep would make: 720" in text  # (30 + 60) * 8
    assert "**broken**: temperature: expected > 0" in text
    assert "| broken |" in text and f"tensorboard --logdir {sweep_dir}" in text


def test_a_failed_run_is_marked_and_the_others_reported(sweep_dir: Path) -> None:
    sweep = read_sweep(sweep_dir)
    assert [r.name for r in sweep.finished] == ["small-kd", "small-nokd", "wide-kd", "wide-nokd"]
    assert [r.name for r in sweep.failed] == ["broken"]
    assert [[r.name for r in g] for g in sweep.groups()] == [
        ["small-kd", "small-nokd"],
        ["wide-kd", "wide-nokd"],
    ]
    assert sweep.finished[2].inference_per_s == 310.5
    savings = sweep.savings()
    assert (savings.cache_examples, savings.online_forwards) == (80, 720)
    assert savings.online_teacher_seconds is None  # no measured precompute
    # a run whose metrics.json vanished is failed too, not a crash
    (sweep_dir / "wide-nokd" / "metrics.json").unlink()
    text = write_report(sweep_dir).read_text()
    assert "**wide-nokd**:" in text and "3 finished, 2 failed" in text


def test_missing_matplotlib_is_one_clear_line(
    sweep_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises
    with pytest.raises(MissingDependencyError, match=r"pip install 'cachebrew\[plot\]'"):
        write_report(sweep_dir)
    result = CliRunner().invoke(app, ["report", str(sweep_dir)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: figures need matplotlib, which is not installed: pip install 'cachebrew[plot]' "
        "(rerun with --debug for the traceback)"
    ]
    # the end of a sweep: the report is written without figures, and says why
    write_sweep_report(sweep_dir, OVERRIDES)
    text = (sweep_dir / "report.md").read_text()
    assert "Figures not drawn: figures need matplotlib" in text and "![" not in text


def _hparams_of(log_dir: Path) -> tuple[dict[str, Any], dict[str, float], int]:
    """(hparams, sweep/ metrics, session status) as TensorBoard's event reader sees them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    tags = [t for t in events.Tags()["scalars"] if t.startswith(METRIC_PREFIX)]
    metrics = {t.removeprefix(METRIC_PREFIX): events.Scalars(t)[-1].value for t in tags}
    return values, metrics, end.status


def test_hparams_summaries_read_back_with_every_override_and_metric(sweep_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    write_hparams(read_sweep(sweep_dir))
    write_hparams(read_sweep(sweep_dir))  # re-writing replaces the summaries, never doubles them
    assert len(list((sweep_dir / "wide-kd" / "tb").glob("*.hparams"))) == 1
    values, metrics, status = _hparams_of(sweep_dir / "wide-nokd" / "tb")
    assert values == {"student": "wide.json", "optimizer.lr": 0.001, "kd": False,
                      "distill.temperature": 8.0}  # fmt: skip
    assert metrics["accuracy"] == pytest.approx(0.83) and metrics["params"] == 9_500_000
    assert {"macro_f1", "final_loss", "examples_per_s", "train_seconds"} <= set(metrics)
    assert status == api_pb2.STATUS_SUCCESS
    values, metrics, status = _hparams_of(sweep_dir / "small-kd" / "tb")
    assert values["kd"] is True and values["student"] == "small.json"
    values, metrics, status = _hparams_of(sweep_dir / "broken" / "tb")
    assert values == {"distill.temperature": 0} and metrics == {}  # no config.yaml
    assert status == api_pb2.STATUS_FAILURE
    root = EventAccumulator(str(sweep_dir))
    root.Reload()
    experiment = metadata.parse_experiment_plugin_data(
        root.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    )
    names = ["kd", "student", "optimizer.lr", "distill.temperature"]  # as the runs override
    assert [h.name for h in experiment.hparam_infos] == names
    metric_tags = [m.name.tag for m in experiment.metric_infos]
    assert metric_tags[:2] == ["sweep/accuracy", "sweep/macro_f1"]


def test_report_command_and_a_directory_that_is_no_sweep(
    sweep_dir: Path, teacher_eval: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    seconds = tmp_path / "precompute_seconds"
    seconds.write_text("37\n")
    result = runner.invoke(
        app, ["report", str(sweep_dir), "--teacher-eval", str(teacher_eval),
              "--precompute-seconds", str(seconds)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tensorboard --logdir" in result.output
    assert "37 s measured once" in (sweep_dir / "report.md").read_text()
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no results.csv" in result.output
    result = runner.invoke(app, ["report", str(sweep_dir), "--precompute-seconds", "soon"])
    assert result.exit_code == 1 and "expected seconds" in result.output


def test_a_sweep_without_overrides_shows_the_keys_that_differ(sweep_dir: Path) -> None:
    (sweep_dir / "overrides.json").unlink()  # a sweep made before the report existed
    write_hparams(read_sweep(sweep_dir))
    values, _, _ = _hparams_of(sweep_dir / "wide-nokd" / "tb")
    assert values == {"student": "wide.json", "kd": False, "optimizer.lr": 0.001}
