"""cachebrew benchmarks: every figure is a ratio against a baseline measured in the same run.

Usage: ``make bench`` (or ``python benchmarks/run.py [--examples N] [--steps N]``).

Uses the real all-MiniLM-L6-v2 teacher and VADER sentences prepared under ``data/`` (``make
bench`` prepares them). Prints a Markdown table and writes ``runs/bench/results.json``.

1. precompute: throughput of the teacher pass + writing against a forward-only teacher pass
   over the same batches (the cost of encoding, compressing and writing that the background
   writer does not hide; model loading and corpus reading are excluded from both).
2. cache size per dtype, bytes per example, against unpadded fp32.
3. reading: CacheDataset streaming against per-example ``reader.get``.
4. distill: student examples/s from the cache against the same loop with a live teacher
   (online, TextBrewer's way), and what a sweep of S students costs each way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench"
SPEC = "logits:logprobs,hidden:0,3,6,attention:5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    teacher_dir, corpus = _inputs(args.examples)
    results: dict[str, Any] = {"teacher": str(teacher_dir), "examples": args.examples}
    results["precompute"] = bench_precompute(teacher_dir, corpus, args.batch_size)
    results["storage"] = bench_storage(teacher_dir, corpus, args.batch_size)
    cache = OUT / "cache-fp16"
    results["reading"] = bench_reading(cache, args.batch_size)
    results["distill"] = bench_distill(teacher_dir, cache, args.batch_size, args.steps)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def _inputs(num_examples: int) -> tuple[Path, Path]:
    teacher = ROOT / "data" / "minilm"
    source = ROOT / "data" / "sentiment" / "train.jsonl"
    if not (teacher / "model.safetensors").exists() or not source.exists():
        sys.exit("benchmarks need real data: run `cachebrew data prepare --all --out data` first")
    lines = source.read_text().splitlines()[:num_examples]
    corpus = OUT / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    return teacher, corpus


def _precompute_config(teacher: Path, corpus: Path, out: Path, dtype: str, batch_size: int):
    from cachebrew.teacher.precompute import PrecomputeConfig

    return PrecomputeConfig(
        teacher=str(teacher),
        data=str(corpus),
        out=str(out),
        features=SPEC,
        dtype=dtype,
        label_field="label",
        id_field="id",
        task="sequence_classification",
        num_labels=3,
        batch_size=batch_size,
        max_length=128,
        device="cpu",
        overwrite=True,
    )


def bench_precompute(teacher: Path, corpus: Path, batch_size: int) -> dict[str, float]:
    """Forward-only teacher pass vs the full precompute (writer in a background thread)."""
    from common import forward_only_seconds

    from cachebrew.corpus import read_corpus
    from cachebrew.models import load_model
    from cachebrew.teacher.precompute import run_precompute

    loaded = load_model(teacher, task="sequence_classification", num_labels=3)
    records = list(read_corpus(corpus, label_field="label", id_field="id"))
    forward_s = forward_only_seconds(
        loaded, records, max_length=128, batch_size=batch_size, shard_size=256
    )
    cfg = _precompute_config(teacher, corpus, OUT / "cache-fp16", "fp16", batch_size)
    summary = run_precompute(cfg, progress=False)
    return {
        "teacher_forward_s": forward_s,
        "precompute_pass_s": summary.pass_seconds,
        "precompute_total_s": summary.seconds,
        "throughput_ratio": forward_s / summary.pass_seconds,
        "examples_per_s": summary.examples_computed / summary.pass_seconds,
    }


def bench_storage(teacher: Path, corpus: Path, batch_size: int) -> dict[str, Any]:
    """Bytes per example of the same features in each dtype."""
    from cachebrew.cache import describe_cache, open_cache
    from cachebrew.teacher.precompute import run_precompute

    sizes: dict[str, Any] = {}
    for dtype in ("fp32", "bf16"):
        out = OUT / f"cache-{dtype}"
        run_precompute(_precompute_config(teacher, corpus, out, dtype, batch_size), progress=False)
    for dtype in ("fp32", "fp16", "bf16"):
        info = describe_cache(open_cache(OUT / f"cache-{dtype}", verify=False))
        sizes[dtype] = {
            "bytes_per_example": info["bytes_per_example"],
            "features": {f["name"]: f.get("ratio_vs_fp32") for f in info["features"]},
        }
    fp32 = sizes["fp32"]["bytes_per_example"]
    for dtype in sizes:
        sizes[dtype]["smaller_than_fp32_cache"] = fp32 / sizes[dtype]["bytes_per_example"]
    return sizes


def bench_reading(cache: Path, batch_size: int) -> dict[str, float]:
    """Streaming batches against per-example random access, examples/s."""
    from cachebrew.cache import open_cache
    from cachebrew.cache.feed.dataset import CacheDataset

    dataset = CacheDataset(str(cache), batch_size=batch_size, seed=0)
    start = time.perf_counter()
    streamed = sum(len(batch["example_ids"]) for batch in dataset)
    stream_s = time.perf_counter() - start
    reader = open_cache(cache)
    ids = reader.example_ids()[:256]
    start = time.perf_counter()
    for example_id in ids:
        reader.get(example_id)
    get_s = time.perf_counter() - start
    stream_rate, get_rate = streamed / stream_s, len(ids) / get_s
    return {
        "stream_examples_per_s": stream_rate,
        "get_examples_per_s": get_rate,
        "stream_over_get": stream_rate / get_rate,
    }


STUDENTS = {"2L-384": 384, "2L-128": 128}  # 2 layers; hidden size (MiniLM's is 384)


def _student(teacher: Path, hidden: int) -> tuple[Any, Any]:
    from transformers import BertConfig

    from cachebrew.models import load_model

    config = BertConfig.from_pretrained(teacher)
    config.num_hidden_layers, config.num_labels = 2, 3
    config.hidden_size, config.intermediate_size = hidden, 4 * hidden
    config.num_attention_heads = hidden // 32
    path = OUT / f"student-{hidden}.json"
    path.write_text(config.to_json_string())
    loaded = load_model(path, task="sequence_classification", num_labels=3, role="student")
    return loaded.model, loaded.adaptor


def _distill_run(
    teacher: Path | None, cache: Path, hidden: int, batch_size: int, steps: int
) -> float:
    """Examples/s of `steps` GeneralDistiller steps from the cache (teacher None) or online.

    The distillation is the issue's TextBrewer-style sentiment config: T=8, hard labels 0.5,
    hidden_mse (with a projection) and nst matches.
    """
    from cachebrew import DistillationConfig, GeneralDistiller, TrainingConfig
    from cachebrew.cache.feed.dataset import CacheDataset
    from cachebrew.models import load_model

    student, adaptor_S = _student(ROOT / "data" / "minilm", hidden)
    model_T = adaptor_T = None
    if teacher is not None:
        loaded = load_model(teacher, task="sequence_classification", num_labels=3)
        model_T, adaptor_T = loaded.model, loaded.adaptor
    dataset = CacheDataset(str(cache), batch_size=batch_size, seed=0, teacher_cache=teacher is None)
    matches = [
        {
            "layer_T": 3,
            "layer_S": 1,
            "feature": "hidden",
            "loss": "hidden_mse",
            "weight": 1,
            "proj": ["linear", hidden, 384],
        },
        {"layer_T": [0, 6], "layer_S": [0, 2], "feature": "hidden", "loss": "nst", "weight": 1},
    ]
    distiller = GeneralDistiller(
        TrainingConfig(device="cpu", output_dir=str(OUT / "ckpt"), seed=0),
        DistillationConfig(temperature=8, hard_label_weight=0.5, intermediate_matches=matches),
        model_T,
        student,
        adaptor_T,
        adaptor_S,
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    start = time.perf_counter()
    with distiller:
        distiller.train(optimizer, dataset, num_steps=steps)
    return steps * batch_size / (time.perf_counter() - start)


def bench_distill(teacher: Path, cache: Path, batch_size: int, steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, hidden in STUDENTS.items():
        cached = _distill_run(None, cache, hidden, batch_size, steps)
        online = _distill_run(teacher, cache, hidden, batch_size, steps)
        out[name] = {
            "cached_examples_per_s": cached,
            "online_examples_per_s": online,
            "speedup": cached / online,
        }
    return out


def render(results: dict[str, Any]) -> str:
    p, r, d = results["precompute"], results["reading"], results["distill"]
    s = results["storage"]
    rows = [
        (
            "precompute throughput / forward-only throughput",
            f"{p['throughput_ratio']:.2f}",
            f"{p['examples_per_s']:.0f} ex/s written",
        ),
        (
            "cache bytes/example fp32 / fp16 / bf16",
            " / ".join(
                f"{s[d]['bytes_per_example'] / 1e3:.0f} KB" for d in ("fp32", "fp16", "bf16")
            ),
            f"fp16 {s['fp16']['smaller_than_fp32_cache']:.2f}x, bf16 "
            f"{s['bf16']['smaller_than_fp32_cache']:.2f}x smaller than fp32",
        ),
        (
            "streaming read / per-example get",
            f"{r['stream_over_get']:.1f}x",
            f"{r['stream_examples_per_s']:.0f} vs {r['get_examples_per_s']:.0f} ex/s",
        ),
    ]
    rows += [
        (
            f"distill {name} student: from cache / online (live teacher)",
            f"{v['speedup']:.2f}x",
            f"{v['cached_examples_per_s']:.1f} vs {v['online_examples_per_s']:.1f} ex/s",
        )
        for name, v in d.items()
    ]
    lines = ["| measure | ratio | detail |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
