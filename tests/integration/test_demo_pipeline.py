"""The demo pipeline end to end on a few hundred sentences (slow: `make test-slow`).

Runs `make -C pipelines demo` into a temporary OUT with small subsets (200 train, 100 dev,
200 test sentences) and checks the artefacts each step leaves: the cache manifest, every
run's metrics.json, results.json rows and the printed table. Skips when the real data is not
prepared and cannot be fetched (no package registry).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
KEYS = {"student", "kd", "metric", "value", "macro_f1", "params", "examples_per_s"}
NUM_TRAIN, NUM_TEST = 200, 200
SIZES = [f"DEMO_TRAIN={NUM_TRAIN}", "DEMO_DEV=100", f"DEMO_TEST={NUM_TEST}"]
RUNS = ("minilm-3l-kd", "minilm-3l-nokd", "bert-2l-128-kd", "bert-2l-128-nokd")

pytestmark = pytest.mark.slow


def _ensure_data() -> None:
    needed = [DATA / "sentiment" / "prepared.json", DATA / "minilm" / "prepared.json"]
    if all(p.is_file() for p in needed):
        return
    done = subprocess.run(
        [sys.executable, "-m", "cachebrew", "data", "prepare", "sentiment", "minilm",
         "--out", str(DATA)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"data/ not prepared and `cachebrew data prepare` failed: {done.stderr[-300:]}")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    _ensure_data()
    out = tmp_path_factory.mktemp("pipelines")
    done = subprocess.run(
        ["make", "-C", str(ROOT / "pipelines"), "demo", f"OUT={out}", f"PY={sys.executable}",
         *SIZES],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out / "demo", done.stdout


def test_cache_manifest_holds_logits_and_the_matched_hidden_layers(demo_out: tuple[Path, str]):
    out, _ = demo_out
    manifest = json.loads((out / "cache" / "manifest.json").read_text())
    assert manifest["totals"]["num_examples"] == NUM_TRAIN
    assert {"logits", "hidden.2", "hidden.3", "hidden.4", "hidden.6"} <= set(manifest["arrays"])


def test_every_run_wrote_metrics(demo_out: tuple[Path, str]):
    out, _ = demo_out
    for run in RUNS:
        metrics = json.loads((out / "sweep" / run / "metrics.json").read_text())
        assert metrics["status"] == "ok"
        assert metrics["metric"] == "accuracy"
        assert metrics["eval_examples"] == NUM_TEST
        assert metrics["kd"] is run.endswith("-kd")


def test_results_json_rows_and_table(demo_out: tuple[Path, str]):
    out, stdout = demo_out
    rows = json.loads((out / "results.json").read_text())
    assert [r["student"] for r in rows] == list(RUNS)
    for row in rows:
        assert KEYS <= set(row)
        assert row["kd"] is row["student"].endswith("-kd")
        assert 0 <= row["value"] <= 1 and row["examples_per_s"] > 0
    assert rows[0]["params"] > rows[2]["params"]  # 3 x 384 MiniLM vs 2 x 128 BERT
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cache_bytes"] > 0 and summary["precompute_seconds"] is not None
    for name in ("teacher", *RUNS):
        assert f"| {name}" in stdout


def test_the_sweep_report_has_its_figures_and_the_teacher(demo_out: tuple[Path, str]):
    out, stdout = demo_out
    report = (out / "sweep" / "report.md").read_text()
    for name in ("quality", "curves", "savings"):
        assert f"![{name}]({name}.png)" in report
        assert (out / "sweep" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "dashed: the teacher" in report and "s measured once" in report
    assert f"report: {out / 'sweep' / 'report.md'}" in stdout


def test_second_make_recomputes_nothing(demo_out: tuple[Path, str]):
    out, _ = demo_out
    done = subprocess.run(
        ["make", "-q", "-C", str(ROOT / "pipelines"), str(out / "results.json"),
         str(out / "sweep" / "report.md"),
         f"OUT={out.parent}", f"PY={sys.executable}",
         *SIZES],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
