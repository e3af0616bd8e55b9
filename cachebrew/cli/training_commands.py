"""Stage two's commands: distill, sweep, report, eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cachebrew.cli.app import _DRY_RUN_HELP, _quiet_logs, app


@app.command()
def distill(
    config: str | None = typer.Option(None, "--config", help="distill.yaml with any of the keys."),
    cache: str | None = typer.Option(None, help="Teacher cache directory or fsspec URL."),
    student: str | None = typer.Option(
        None, help="Student: HF config JSON (fresh), HF directory or module:function."
    ),
    out: str | None = typer.Option(
        None, help="RUN_DIR: checkpoints/, tb/, config.yaml, metrics.json."
    ),
    teacher: str | None = typer.Option(
        None, help="Online mode: run this teacher on the cached inputs instead of reading features."
    ),
    allow_teacher_mismatch: bool = typer.Option(
        False,
        "--allow-teacher-mismatch",
        help="Online mode: train even if --teacher is not the teacher the cache was built with.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a key: --set distill.temperature=2 (repeatable)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from RUN_DIR/checkpoints/latest."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar; log warnings only."),
    dry_run: bool = typer.Option(False, "--dry-run", help=_DRY_RUN_HELP),
) -> None:
    """Train a student from a cache (flags override the YAML, --set overrides both)."""
    with _quiet_logs(quiet):
        from cachebrew.runner.config import load_distill_config
        from cachebrew.runner.run import run_distill

        flags: dict[str, Any] = {"cache": cache, "student": student, "out": out}
        flags |= {"teacher": teacher, "allow_teacher_mismatch": allow_teacher_mismatch or None}
        cfg = load_distill_config(config, flags, set_)
        if dry_run:
            from cachebrew.runner.dry_run import describe_dry_run

            typer.echo(describe_dry_run([cfg], resume=resume))
            return
        metrics = run_distill(cfg, resume=resume, progress=not quiet)
    summary = {
        k: v for k, v in metrics.items() if k not in ("loss_curve", "loss_terms", "eval_curve")
    }
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def sweep(
    sweep_file: str = typer.Argument(..., help="sweep.yaml: base plus grid and/or runs."),
    out: str = typer.Option(..., "--out", help="Sweep directory: one RUN_DIR per run, results."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Runs at once (subprocesses)."),
    devices: str | None = typer.Option(None, "--devices", help="cuda:0,cuda:1: a run per device."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a key of base: --set cache=caches/sst (repeatable)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars; log warnings only."),
    dry_run: bool = typer.Option(False, "--dry-run", help=_DRY_RUN_HELP),
) -> None:
    """Train many students over one cache; write results.csv, results.md and report.md."""
    with _quiet_logs(quiet):
        from cachebrew.runner.dry_run import describe_dry_run
        from cachebrew.runner.placement import device_slots
        from cachebrew.runner.sweep import load_sweep, run_sweep

        slots, runs = device_slots(devices, parallel), load_sweep(sweep_file, set_)
        if dry_run:
            typer.echo(describe_dry_run([run.config(out) for run in runs]))
            return
        results = run_sweep(runs, out, parallel=parallel, progress=not quiet, devices=slots)
    typer.echo((Path(out) / "results.md").read_text(encoding="utf-8"))
    if any(row["status"] != "ok" for row in results):
        raise typer.Exit(code=1)


@app.command()
def report(
    sweep_dir: str = typer.Argument(..., help="A sweep's --out directory."),
    teacher_eval: str | None = typer.Option(
        None, "--teacher-eval", help="The teacher's `cachebrew eval --json`: a reference line."
    ),
    teacher_name: str = typer.Option("teacher", "--teacher-name", help="Its legend label."),
    precompute_seconds: str | None = typer.Option(
        None, "--precompute-seconds", help="Measured teacher pass (seconds or a file with them)."
    ),
) -> None:
    """Write SWEEP_DIR/report.md with figures, and HParams summaries for TensorBoard."""
    from cachebrew.runner.report import write_report
    from cachebrew.runner.report.collect import read_seconds

    seconds = read_seconds(precompute_seconds) if precompute_seconds else None
    path = write_report(
        sweep_dir,
        teacher_eval=teacher_eval,
        teacher_name=teacher_name,
        precompute_seconds=seconds,
    )
    typer.echo(f"report: {path}\ntensorboard --logdir {sweep_dir}")


@app.command("eval")
def eval_(
    model: str = typer.Argument(..., help="Run dir, checkpoint dir, final/ or HF (teacher) dir."),
    data: str = typer.Option(..., "--data", help="Labelled corpus (jsonl, csv, tsv, parquet)."),
    metrics: str | None = typer.Option(
        None, "--metrics", help="Comma-separated, e.g. accuracy,macro_f1 (default: all that fit)."
    ),
    text_field: str = typer.Option("text", help="Text column (tokens for tagging)."),
    text_pair_field: str | None = typer.Option(None, help="Second text column for pairs."),
    label_field: str = typer.Option("label", help="Label column (tags for tagging)."),
    id_field: str | None = typer.Option(None, help="Example id column."),
    split: str | None = typer.Option(None, help="Split of a save_to_disk DatasetDict."),
    max_length: int | None = typer.Option(None, help="Truncation (default: the model's own)."),
    batch_size: int = typer.Option(64, min=1, help="Examples per forward pass."),
    outside_label: int | None = typer.Option(None, help="The O tag id for token_f1."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score a model on a labelled corpus with every metric that fits its task."""
    from cachebrew.runner.score import format_report, score_model

    fields = {"text_field": text_field, "text_pair_field": text_pair_field}
    fields |= {"label_field": label_field, "id_field": id_field, "split": split}
    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    report = score_model(
        model, data, metrics=names, fields=fields, max_length=max_length,
        batch_size=batch_size, outside_label=outside_label, device=device,
    )  # fmt: skip
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
