"""Stage one's commands: precompute, inspect, verify, compare, finetune."""

from __future__ import annotations

import json
from typing import Any

import typer

from cachebrew.cli.app import app
from cachebrew.errors import CacheUpToDateError, ConfigError

# precompute options that are not PrecomputeConfig fields (how to run, not what to compute)
_PRECOMPUTE_NON_CONFIG = ("config", "set_", "quiet", "part", "finalize", "barrier_timeout")


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
    attn_implementation: str | None = typer.Option(
        None,
        help="auto (default: eager only for attention features), eager, sdpa, flash_attention_2.",
    ),
    teacher_dtype: str | None = typer.Option(
        None,
        help="Teacher weights: auto (default: bf16 on CUDA for 16-bit caches), fp32, bf16, fp16.",
    ),
    device_map: str | None = typer.Option(
        None, help="auto: spread a teacher larger than one device (accelerate); or a JSON map."
    ),
    max_memory: str | None = typer.Option(
        None, help="With --device-map auto: per-device limits, e.g. 0=20GiB,1=20GiB,cpu=60GiB."
    ),
    offload_folder: str | None = typer.Option(
        None, help="Where --device-map puts weights offloaded to disk (default: a temp dir)."
    ),
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
    flags["device_map"], flags["max_memory"] = _placement_flags(device_map, max_memory)
    cfg = load_precompute_config(config, flags, set_)
    # the run configs are read here, in the command layer (teacher/ never imports runner/)
    from cachebrew.runner.reads import check_distill_config_file, distill_configs_of

    if cfg.distill_config is not None:
        check_distill_config_file(cfg.distill_config)
    runs = None if cfg.from_runs is None else distill_configs_of(cfg.from_runs)
    partition = make_partition(part, barrier_timeout_s=barrier_timeout)
    try:
        summary = run_precompute(cfg, progress=not quiet, partition=partition, runs=runs)
    except CacheUpToDateError as done:
        typer.echo(str(done))
        return
    typer.echo(describe_summary(summary))


def _placement_flags(device_map: str | None, max_memory: str | None) -> tuple[Any, Any]:
    """``--device-map auto`` or a JSON object; ``--max-memory 0=20GiB,cpu=60GiB`` as a dict."""
    placement: Any = device_map
    if device_map is not None and device_map.strip().startswith("{"):
        try:
            placement = json.loads(device_map)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--device-map: not a JSON object: {error}") from error
    limits = None
    if max_memory is not None:
        pairs = [item.partition("=") for item in max_memory.split(",") if item.strip()]
        if not pairs or any(not sep or not key or not value for key, sep, value in pairs):
            raise ConfigError(
                f"--max-memory {max_memory!r}: expected DEVICE=LIMIT pairs, e.g. 0=20GiB,cpu=60GiB"
            )
        limits = {int(k) if k.strip().isdigit() else k.strip(): v.strip() for k, _, v in pairs}
    return placement, limits


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
    plot: str | None = typer.Option(
        None, "--plot", help="Also draw bytes per example by feature and layer to this PNG."
    ),
) -> None:
    """Describe a cache: teacher, corpus, features, layers, dtypes, sizes."""
    from cachebrew.cache import describe_cache, open_cache
    from cachebrew.cache.tools.describe import describe_text

    reader = open_cache(cache, verify=False)
    if plot:  # first: a missing matplotlib is the only line printed
        from cachebrew.cache.tools.plot import cache_figure

        cache_figure(reader, plot)
    info = describe_cache(reader)
    typer.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else describe_text(info))
    if plot:
        typer.echo(f"figure: {plot}", err=as_json)


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
    from cachebrew.cache.tools.compare import compare_caches, describe_comparison

    report = compare_caches(cache_a, cache_b, atol=atol)
    typer.echo(
        json.dumps(report, indent=2, sort_keys=True) if as_json else describe_comparison(report)
    )
    if not report["ok"]:
        raise typer.Exit(code=1)


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
