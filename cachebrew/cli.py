"""The ``cachebrew`` command line: parse, load config, call one runner, map errors to exit 1."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from cachebrew.data.cli import data_app
from cachebrew.errors import CachebrewError, CacheUpToDateError, ConfigError

app = typer.Typer(
    name="cachebrew",
    help="Distill NLP models with a teacher that runs once: precompute a cache, then distill from it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Set by the global --debug flag: library errors then propagate with their traceback.
_DEBUG = {"on": False}


# precompute options that are not PrecomputeConfig fields (how to run, not what to compute)
_PRECOMPUTE_NON_CONFIG = ("config", "set_", "quiet", "part", "finalize", "barrier_timeout")


def _print_version(value: bool) -> None:
    if value:
        from cachebrew._version import __version__

        typer.echo(f"cachebrew {__version__}")
        raise typer.Exit()


def _third_party_logs(verbose: bool) -> None:
    """transformers' loading chatter (LOAD REPORT tables, notices) only with ``--verbose``."""
    level = "info" if verbose else "error"
    os.environ["TRANSFORMERS_VERBOSITY"] = level  # read when transformers is first imported
    if not verbose:  # "Loading weights" / "Writing model shards" bars: read on import too
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(logging.INFO if verbose else logging.ERROR)
        if not verbose:
            hf_logging.disable_progress_bar()


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of an error instead of one line."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Also show third-party loading messages (transformers)."
    ),
) -> None:
    """Distill NLP models with a teacher that runs once: precompute a cache, then distill from it.

    Shell completion: `cachebrew --install-completion` (bash, zsh, fish, PowerShell).
    """
    _DEBUG["on"] = debug
    _third_party_logs(verbose)


@app.command()
def precompute(
    teacher: str | None = typer.Option(
        None, help="Teacher: HF directory, HF config JSON or module:function."
    ),
    data: str | None = typer.Option(
        None, help="Corpus: jsonl, csv, tsv, parquet or a save_to_disk directory."
    ),
    out: str | None = typer.Option(None, help="Cache directory or fsspec URL to write."),
    features: str | None = typer.Option(
        None, help="What to store, e.g. logits,hidden:0,4,attention:4."
    ),
    distill_config: str | None = typer.Option(
        None, help="Derive the features from this DistillationConfig YAML."
    ),
    from_runs: str | None = typer.Option(
        None, "--from", help="Store what every run of this run config or sweep file reads."
    ),
    dtype: str | None = typer.Option(None, help="fp16 (default), bf16, fp32 or int8."),
    feature_dtype: list[str] = typer.Option(
        [], "--feature-dtype", help="Per-kind dtype: --feature-dtype hidden=int8 (repeatable)."
    ),
    codec: str | None = typer.Option(
        None, help="lz4-bitshuffle (default), zstd, lz4, blosc-zstd or none."
    ),
    topk: int | None = typer.Option(None, help="Alias of --logits topk:K."),
    logits: str | None = typer.Option(
        None, help="dense (default), topk:K[:q4|q5|q8], sample:N[@T] or exact."
    ),
    text_field: str | None = typer.Option(None, help="Text column (default: text)."),
    text_pair_field: str | None = typer.Option(None, help="Second text column for pairs."),
    label_field: str | None = typer.Option(None, help="Label column."),
    id_field: str | None = typer.Option(None, help="Example id column (default: derived, stable)."),
    split: str | None = typer.Option(None, help="Split of a save_to_disk DatasetDict."),
    task: str | None = typer.Option(None, help="Teacher head when the checkpoint names none."),
    max_length: int | None = typer.Option(None, help="Truncate to this many tokens (default 128)."),
    batch_size: int | None = typer.Option(None, help="Teacher batch size (default 32)."),
    shard_size: int | None = typer.Option(None, help="Examples per shard (default 256)."),
    device: str | None = typer.Option(None, help="auto (default), cpu, cuda, cuda:N."),
    config: str | None = typer.Option(
        None, "--config", help="precompute.yaml with any of these keys."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a key: --set batch_size=64 (repeatable)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a complete or different cache."
    ),
    wait: bool = typer.Option(
        False, "--wait", help="If another precompute writes --out, wait for it instead of failing."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    part: str | None = typer.Option(
        None, "--part", help="Job arrays: compute part I of N (0-based), e.g. --part 0/4."
    ),
    finalize: bool = typer.Option(
        False, "--finalize", help="Publish the manifest of a --part run (names missing parts)."
    ),
    barrier_timeout: float = typer.Option(
        3600.0, "--barrier-timeout", help="torchrun: seconds a rank waits for the others."
    ),
) -> None:
    """Run the teacher once over a corpus and write its outputs to a cache."""
    flags = {k: v for k, v in locals().items() if k not in _PRECOMPUTE_NON_CONFIG}
    from cachebrew.teacher.parallel import make_partition
    from cachebrew.teacher.precompute import (
        describe_summary,
        load_precompute_config,
        run_precompute,
    )

    if finalize:
        _finalize_parts(out, part)
        return

    flags["overwrite"] = overwrite or None
    flags["wait"] = wait or None
    flags.pop("feature_dtype")
    bad = [item for item in feature_dtype if "=" not in item]
    if bad:
        raise ConfigError(f"--feature-dtype {bad}: expected KIND=DTYPE, e.g. hidden=int8")
    set_ = [f"feature_dtypes.{item}" for item in feature_dtype] + set_
    cfg = load_precompute_config(config, flags, set_)
    partition = make_partition(part, barrier_timeout_s=barrier_timeout)
    try:
        summary = run_precompute(cfg, progress=not quiet, partition=partition)
    except CacheUpToDateError as done:
        typer.echo(str(done))
        return
    typer.echo(describe_summary(summary))


def _finalize_parts(out: str | None, part: str | None) -> None:
    from cachebrew.teacher.parallel import finalize, parse_part

    if out is None:
        raise ConfigError("--finalize needs --out, the cache the parts wrote to")
    manifest = finalize(out, parse_part(part)[1] if part else None)
    totals = manifest["totals"]
    typer.echo(f"cache {out}: {totals['num_examples']} examples in {totals['num_shards']} shards")


@app.command()
def inspect(
    cache: str = typer.Argument(..., help="Cache directory or fsspec URL."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Describe a cache: teacher, corpus, features, layers, dtypes, sizes."""
    from cachebrew.cache import describe_cache, open_cache
    from cachebrew.cache.tools.describe import describe_text

    info = describe_cache(open_cache(cache, verify=False))
    typer.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else describe_text(info))


@app.command()
def verify(
    cache: str = typer.Argument(..., help="Cache directory or fsspec URL."),
    teacher: str | None = typer.Option(
        None, help="Recompute examples with this teacher and compare."
    ),
    sample: int = typer.Option(8, help="How many random examples to recompute."),
    seed: int = typer.Option(0, help="Seed of the sample."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    tolerance: float | None = typer.Option(
        None, help="Max relative error allowed (default by stored dtype: fp16 2e-3, fp32 1e-4)."
    ),
    temperature: float = typer.Option(
        1.0, help="Training temperature (> 0) of the fidelity report's KD loss and gradient gaps."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Check every checksum; with --teacher, compare recomputed values and report fidelity."""
    from cachebrew.teacher.verify import describe_report, verify_cache

    report = verify_cache(
        cache, teacher=teacher, sample=sample, seed=seed, device=device, tolerance=tolerance,
        temperature=temperature,
    )  # fmt: skip
    typer.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else describe_report(report))
    if not report["ok"]:
        raise typer.Exit(code=1)


@app.command()
def compare(
    cache_a: str = typer.Argument(..., help="First cache directory or fsspec URL."),
    cache_b: str = typer.Argument(..., help="Second cache directory or fsspec URL."),
    atol: float = typer.Option(0.0, "--atol", help="Max abs difference still equal (>= 0)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compare two caches example by example; exit 1 naming the first difference."""
    with _exit_on_error():
        from cachebrew.cache.tools.compare import compare_caches, describe_comparison

        report = compare_caches(cache_a, cache_b, atol=atol)
    typer.echo(
        json.dumps(report, indent=2, sort_keys=True) if as_json else describe_comparison(report)
    )
    if not report["ok"]:
        raise typer.Exit(code=1)


@contextlib.contextmanager
def _exit_on_error() -> Iterator[None]:
    """A library error becomes ``error: <message>`` on stderr and exit code 1."""
    try:
        yield
    except CachebrewError as error:
        if _DEBUG["on"]:
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None


@contextlib.contextmanager
def _quiet_logs(quiet: bool) -> Iterator[None]:
    """With ``--quiet``, only warnings and errors are logged (the bars are off already)."""
    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


_DRY_RUN_HELP = "Print the resolved config and the plan, check the cache; write nothing."


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
    with _exit_on_error(), _quiet_logs(quiet):
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
    """Train many students over one cache; write results.csv and results.md."""
    with _exit_on_error(), _quiet_logs(quiet):
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
    with _exit_on_error():
        from cachebrew.runner.score import format_report, score_model

        fields = {"text_field": text_field, "text_pair_field": text_pair_field}
        fields |= {"label_field": label_field, "id_field": id_field, "split": split}
        names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
        report = score_model(
            model, data, metrics=names, fields=fields, max_length=max_length,
            batch_size=batch_size, outside_label=outside_label, device=device,
        )  # fmt: skip
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


app.add_typer(data_app, name="data")


@app.command()
def finetune(
    model: str | None = typer.Option(None, help="Local HF directory to fine-tune (data/minilm)."),
    train: str | None = typer.Option(
        None, help="Labelled train corpus (jsonl, csv, tsv, parquet)."
    ),
    dev: str | None = typer.Option(None, help="Labelled dev corpus, evaluated after every epoch."),
    out: str | None = typer.Option(
        None, help="Directory for the best model + finetune_metrics.json."
    ),
    task: str | None = typer.Option(
        None, help="sequence_classification (default), token_classification or causal_lm."
    ),
    tokenizer: str | None = typer.Option(None, help="tokenizer.json if --model has none."),
    text_field: str | None = typer.Option(
        None, help="Text column (default text; tokens if tagging)."
    ),
    label_field: str | None = typer.Option(
        None, help="Label column (default label; tags if tagging)."
    ),
    label_names: str | None = typer.Option(
        None, help="JSON list of label names (default: label_names.json beside --train)."
    ),
    epochs: int | None = typer.Option(None, help="Maximum epochs (default 3)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default 5e-5)."),
    batch_size: int | None = typer.Option(None, help="Train batch size (default 32)."),
    max_length: int | None = typer.Option(None, help="Truncate to this many tokens (default 128)."),
    patience: int | None = typer.Option(
        None, help="Stop after this many epochs without dev gain (default 2)."
    ),
    max_train_examples: int | None = typer.Option(None, help="Train on a seeded random subset."),
    seed: int | None = typer.Option(None, help="Seed of the head, dropout and order (default 0)."),
    device: str | None = typer.Option(None, help="auto (default), cpu, cuda, cuda:N."),
    config: str | None = typer.Option(
        None, "--config", help="finetune.yaml with any of these keys."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set lr=3e-5 (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in --out."),
) -> None:
    """Fine-tune a teacher on a labelled corpus, with dev evaluation and early stopping."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "set_")}
    from cachebrew.teacher.finetune import describe_summary, load_finetune_config, run_finetune

    flags["overwrite"] = overwrite or None
    cfg = load_finetune_config(config, flags, set_)
    typer.echo(describe_summary(run_finetune(cfg)))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: library errors become one clear line and exit code 1.

    An ``OSError`` that escaped the library (a full disk, a permission) is reported the same
    way; ``--debug`` shows the traceback of either instead.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _DEBUG["on"] = False
    try:
        app(args=argv)
    except (CachebrewError, OSError) as error:
        if _DEBUG["on"]:
            raise
        typer.echo(f"error: {error} (rerun with --debug for the traceback)", err=True)
        raise SystemExit(1) from None
