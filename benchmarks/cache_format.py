"""Cache-format benchmark: a BERT-base-shaped teacher (12 layers, 768 hidden, 12 heads, fresh
weights, all-MiniLM-L6-v2's 30,522-token WordPiece tokenizer) on 128-token inputs.

Usage: ``make bench-cache`` (or ``python benchmarks/cache_format.py [--examples N]
[--throughput-examples N]``). Needs ``data/`` from ``cachebrew data prepare --all --out data``.
Prints Markdown tables and writes ``runs/bench-cache/results.json``.

1. Size: bytes per example and compression per feature for the same teacher outputs stored as
   fp32, fp16, bf16 and int8 (int8 for logits and hidden states; attention refuses int8 and is
   stored as fp16 in that run).
2. Precompute throughput against the bare teacher forward over the same batches (model load
   and corpus reading excluded from both; runs interleaved, median of each).
3. Reading: the reader's chunk-sequential pass over the cache (decoding every feature to
   float32, checksums on) against reading the same files raw, both from the page cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import ROOT, bert_base_teacher, long_corpus

OUT = ROOT / "runs" / "bench-cache"
SPEC = "logits,hidden:0,4,8,12,attention:3,7,11"  # attention layers are 0..11
ALL_LAYERS = "logits,hidden:" + ",".join(map(str, range(13))) + ",attention:"
ALL_LAYERS += ",".join(map(str, range(12)))
DTYPES = ("fp32", "fp16", "bf16", "int8")
MAX_LENGTH = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=48, help="examples per size run")
    parser.add_argument("--throughput-examples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    teacher = bert_base_teacher(OUT)
    corpus = long_corpus(OUT, max(args.examples, args.throughput_examples))
    results: dict[str, Any] = {
        "teacher": "BertForSequenceClassification 12 x 768, 12 heads, fresh weights (seed 0)",
        "threads": torch.get_num_threads(),
    }
    results["size"] = bench_size(teacher, corpus, args.examples, args.batch_size)
    results["throughput"] = {
        spec: bench_throughput(teacher, corpus, spec, args.throughput_examples, args.batch_size)
        for spec in (SPEC, ALL_LAYERS)
    }
    results["reading"] = bench_reading(OUT / "throughput-cache")
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def _config(teacher: Path, corpus: Path, out: Path, spec: str, dtype: str, batch_size: int):
    from cachebrew.teacher.precompute import PrecomputeConfig

    return PrecomputeConfig(
        teacher=str(teacher),
        data=str(corpus),
        out=str(out),
        features=spec,
        dtype=dtype,
        feature_dtypes={"attention": "fp16"} if dtype == "int8" else None,
        label_field="label",
        id_field="id",
        max_length=MAX_LENGTH,
        batch_size=batch_size,
        shard_size=32,
        device="cpu",
        overwrite=True,
    )


def _head(corpus: Path, n: int) -> Path:
    path = corpus.with_name(f"corpus-{n}.jsonl")
    path.write_text("".join(corpus.read_text().splitlines(keepends=True)[:n]))
    return path


def bench_size(teacher: Path, corpus: Path, n: int, batch_size: int) -> dict[str, Any]:
    """Bytes per example and compression per feature in each dtype."""
    from cachebrew.cache import describe_cache, open_cache
    from cachebrew.teacher.precompute import run_precompute

    data = _head(corpus, n)
    sizes: dict[str, Any] = {}
    for dtype in DTYPES:
        out = OUT / f"size-{dtype}"
        run_precompute(_config(teacher, data, out, SPEC, dtype, batch_size), progress=False)
        info = describe_cache(open_cache(out, verify=False))
        sizes[dtype] = {
            "bytes_per_example": info["bytes_per_example"],
            "features": {
                f["name"]: {
                    "dtype": f["dtype"],
                    "bytes_per_example": f["bytes_per_example"],
                    "compression_ratio": f["compression_ratio"],
                    "ratio_vs_fp32": f["ratio_vs_fp32"],
                }
                for f in info["features"]
            },
        }
        shutil.rmtree(out)
    return sizes


def bench_throughput(
    teacher: Path, corpus: Path, spec: str, n: int, batch_size: int, repeats: int = 2
) -> dict[str, Any]:
    """Forward-only and precompute passes over the same batches, interleaved."""
    from common import forward_only_seconds

    from cachebrew.corpus import read_corpus
    from cachebrew.models import load_model
    from cachebrew.teacher.precompute import run_precompute

    data = _head(corpus, n)
    loaded = load_model(teacher)
    records = list(read_corpus(data, label_field="label", id_field="id"))
    cfg = _config(teacher, data, OUT / "throughput-cache", spec, "fp16", batch_size)
    forward, passes = [], []
    summary = None
    for _ in range(repeats):
        forward.append(
            forward_only_seconds(
                loaded, records, max_length=MAX_LENGTH, batch_size=batch_size, shard_size=32
            )
        )
        summary = run_precompute(cfg, progress=False)
        passes.append(summary.pass_seconds)
    assert summary is not None
    forward_s, pass_s = statistics.median(forward), statistics.median(passes)
    return {
        "examples": n,
        "forward_s": forward,
        "precompute_pass_s": passes,
        "forward_examples_per_s": n / forward_s,
        "precompute_examples_per_s": n / pass_s,
        "throughput_ratio": forward_s / pass_s,
        "bytes_on_disk": summary.bytes_on_disk,
        "uncompressed_bytes": summary.uncompressed_bytes,
    }


def bench_reading(cache: Path, repeats: int = 3) -> dict[str, Any]:
    """The reader's streaming pass vs a raw read of the same files (best of ``repeats``)."""
    from cachebrew.cache import open_cache

    files = [p for p in cache.rglob("*") if p.is_file()]
    on_disk = sum(p.stat().st_size for p in files)
    raw, reader_s, decoded = [], [], 0
    for _ in range(repeats + 1):  # the first round warms the page cache
        start = time.perf_counter()
        for p in files:
            p.read_bytes()
        raw.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoded = 0
        for example in open_cache(cache).iter_examples():
            decoded += sum(a.nbytes for a in example["features"].values())
        reader_s.append(time.perf_counter() - start)
    raw_s, read_s = min(raw[1:]), min(reader_s[1:])
    return {
        "bytes_on_disk": on_disk,
        "decoded_bytes": decoded,
        "raw_read_mb_per_s": on_disk / raw_s / 1e6,
        "reader_disk_mb_per_s": on_disk / read_s / 1e6,
        "reader_decoded_mb_per_s": decoded / read_s / 1e6,
        "reader_over_raw": raw_s / read_s,
    }


def _size(n: float) -> str:
    return f"{n:.0f} B" if n < 1000 else f"{n / 1e3:,.1f} KB"


def render(results: dict[str, Any]) -> str:
    size = results["size"]
    kinds = list(size["fp32"]["features"])
    lines = [
        "| feature | " + " | ".join(DTYPES) + " |",
        "|---|" + "---|" * len(DTYPES),
    ]
    for kind in [*kinds, "total"]:
        cells = []
        for dtype in DTYPES:
            if kind == "total":
                cells.append(f"**{size[dtype]['bytes_per_example'] / 1e3:,.0f} KB**")
                continue
            f = size[dtype]["features"][kind]
            cells.append(
                f"{_size(f['bytes_per_example'])} ({f['compression_ratio']:.2f}x codec, "
                f"{f['ratio_vs_fp32']:.2f}x vs fp32){'' if f['dtype'] == dtype else ' ' + f['dtype']}"
            )
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "| features | forward ex/s | precompute ex/s | ratio |", "|---|---|---|---|"]
    for spec, t in results["throughput"].items():
        lines.append(
            f"| {spec} | {t['forward_examples_per_s']:.2f} | "
            f"{t['precompute_examples_per_s']:.2f} | **{t['throughput_ratio']:.3f}** |"
        )
    r = results["reading"]
    lines += [
        "",
        f"reading {r['bytes_on_disk'] / 1e6:.1f} MB on disk ({r['decoded_bytes'] / 1e6:.1f} MB "
        f"decoded): raw file read {r['raw_read_mb_per_s']:,.0f} MB/s; reader "
        f"{r['reader_disk_mb_per_s']:,.0f} MB/s of disk bytes = "
        f"{r['reader_decoded_mb_per_s']:,.0f} MB/s decoded ({r['reader_over_raw']:.3f} of raw)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
