"""Tabulate the LM pipeline: per logits mode, what the cache costs and what its student reaches.

    python lm/report.py --dir out/lm --modes dense topk:128 sample:12 --nokd-cache topk-128 \
        --cb "python -m cachebrew"

Reads, under ``--dir``: ``cache-<name>/`` (``cachebrew inspect --json``: bytes per token of the
logits, bytes on disk), ``precompute_ms-<name>`` (wall time of `cachebrew precompute`, written by
the Makefile), ``students/<name>/metrics.json`` (distill steps and train seconds) and
``students/<name>/test_eval.json`` (`cachebrew eval --json`: test perplexity), the same for the
``nokd`` student, and ``teacher_eval.json``. ``<name>`` is the mode with ``:`` -> ``-``.
Writes ``results.json`` (one row per student + the teacher) and ``results.md`` (printed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any


def mode_name(mode: str) -> str:
    """The directory name of a logits mode (``topk:128`` -> ``topk-128``)."""
    return mode.replace(":", "-")


def cache_costs(cache: Path, cb: str) -> dict[str, Any]:
    """Bytes per token of the logits and bytes on disk, from ``cachebrew inspect --json``."""
    out = subprocess.run(
        [*shlex.split(cb), "inspect", str(cache), "--json"], check=True, capture_output=True
    ).stdout
    info = json.loads(out)
    logits = next(f for f in info["features"] if f["name"] == "logits")
    return {
        "bytes_per_token": logits["bytes_per_row"]["total"],
        "bytes_per_token_parts": logits["bytes_per_row"],
        "cache_bytes": info["bytes_on_disk"],
        "logits_mode": logits["logits_mode"],
    }


def student_row(run: Path) -> dict[str, Any]:
    """Test perplexity and distill speed of one student run directory."""
    metrics = json.loads((run / "metrics.json").read_text())
    scored = json.loads((run / "test_eval.json").read_text())
    steps = int(metrics["steps"])
    return {
        "test_perplexity": scored["metrics"]["perplexity"],
        "test_tokens": scored.get("tokens"),
        "steps": steps,
        "distill_seconds": metrics["train_seconds"],
        "seconds_per_step": metrics["train_seconds"] / max(1, steps),
        "final_loss": metrics["final_loss"],
    }


def build(root: Path, modes: list[str], nokd_cache: str, cb: str) -> dict[str, Any]:
    """``{"teacher": {...}, "rows": [...]}`` of the pipeline under ``root``."""
    rows = []
    for mode in modes:
        name = mode_name(mode)
        row: dict[str, Any] = {"student": name, "mode": mode}
        row |= cache_costs(root / f"cache-{name}", cb)
        row["precompute_seconds"] = int((root / f"precompute_ms-{name}").read_text()) / 1000
        rows.append(row | student_row(root / "students" / name))
    rows.append({"student": "nokd", "mode": "no KD"} | student_row(root / "students" / "nokd"))
    teacher = json.loads((root / "teacher_eval.json").read_text())
    return {
        "teacher": {
            "test_perplexity": teacher["metrics"]["perplexity"],
            "params": teacher["params"],
            "test_tokens": teacher.get("tokens"),
        },
        "nokd_reads_cache": nokd_cache,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    """The table of :func:`build`'s result."""
    teacher = result["teacher"]
    lines = [
        f"teacher: test perplexity {teacher['test_perplexity']:.1f} ({teacher['params']:,} "
        f"params, {teacher['test_tokens']} test tokens)",
        "",
        "| student | logits | B/token | cache | precompute s | distill s/step | test ppl |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        kd = "bytes_per_token" in row
        lines.append(
            f"| {row['student']} | {row['mode']} | "
            + (
                f"{row['bytes_per_token']:.1f} | {row['cache_bytes'] / 1e6:.1f} MB | "
                if kd
                else "- | - | "
            )
            + (f"{row['precompute_seconds']:.1f} | " if kd else "- | ")
            + f"{row['seconds_per_step']:.3f} | {row['test_perplexity']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--modes", nargs="+", required=True)
    parser.add_argument("--nokd-cache", default="topk-128")
    parser.add_argument("--cb", default="python -m cachebrew", help="How to run cachebrew.")
    args = parser.parse_args()
    result = build(args.dir, args.modes, args.nokd_cache, args.cb)
    (args.dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.dir / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
