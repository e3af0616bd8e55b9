"""What a layout-free epoch order costs the reader: run sizes against the old layout-bound order.

Usage: ``python benchmarks/epoch_order.py [--examples 512] [--repeats 3] [--runs 16 64 256]
[--before DIR]``. ``--before`` / ``--after`` are checkouts of the code before and after the change (``git archive``
of each commit unpacked into a directory; ``--after`` defaults to this tree); its order (shards permuted, each cut into runs of
about ``window_bytes`` decoded bytes, runs permuted inside their shard) is timed in the same
run, interleaved. Prints a Markdown table and writes ``runs/bench-order/results.json``.

Caches: ``benchmarks/reader_speed.py``'s synthetic BERT-base-shaped hidden and attention
caches (fp16, lz4-bitshuffle, shards of 64), with ``--examples`` examples (512: ~200 MB stored
each, more than the reader's 64 MiB chunk budget, so chunks shared by two runs far apart in
the stream are decoded twice). Per epoch (shuffled, batches of 16, one decode thread): wall
and CPU seconds of the second epoch (crc32 already checked) and the chunks decoded, against
the cache's number of chunks (1.00 = every chunk decoded once). Each measurement is a fresh
process so the two code versions alternate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT

sys.path.insert(0, str(ROOT / "tests" / "helpers"))  # the synthetic cache generator

OUT = ROOT / "runs" / "bench-order"


def _worker(cache: str, run_examples: int | None, buffer_size: int) -> dict[str, Any]:
    """One dataset, two shuffled epochs: seconds of the second, chunks decoded per epoch."""
    from cachebrew.cache import open_cache
    from cachebrew.cache.feed.dataset import CacheDataset
    from cachebrew.cache.read.shard import ShardReader

    decoded = [0]
    original = ShardReader.read_rows

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        decoded[0] += 1
        return original(self, *args, **kwargs)

    ShardReader.read_rows = counting  # type: ignore[method-assign]
    kwargs = {} if run_examples is None else {"run_examples": run_examples}
    dataset = CacheDataset(
        open_cache(cache), batch_size=16, decode_threads=1, buffer_size=buffer_size, **kwargs
    )
    seconds, cpu = [], []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        decoded[0] = 0
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in dataset:
            pass
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    reader = open_cache(cache)
    chunks = sum(
        -(-info["rows"] // info["chunk_rows"])
        for k in range(reader.num_shards)
        for info in reader.shard(k).meta["arrays"].values()
    )
    return {"seconds": seconds[1], "cpu": cpu[1], "decoded": decoded[0], "chunks": chunks}


def _measure(code: Path, cache: Path, run_examples: int | None, buffer: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    args = [sys.executable, __file__, "--worker", str(cache), "--buffer", str(buffer)]
    if run_examples is not None:
        args += ["--run-examples", str(run_examples)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _build_cache(kind: str, num_examples: int, shard_size: int) -> Path:
    """reader_speed.py's synthetic cache of one kind, in shards of ``shard_size`` (reused)."""
    from reader_speed import KINDS
    from synthetic_cache import synthetic_examples, write_examples

    from cachebrew.cache import CacheWriter, parse_feature_spec

    path = OUT / f"{kind}-{num_examples}x{shard_size}"
    if (path / "manifest.json").exists():
        return path
    spec = parse_feature_spec(KINDS[kind], dtype="fp16", codec="lz4-bitshuffle")
    examples = synthetic_examples(
        spec, num_examples, seed=0, min_length=26, max_length=128, hidden_size=768, num_heads=12
    )
    with CacheWriter(
        path, spec, teacher_info={"class": "synthetic"}, corpus_fingerprint="bench",
        shard_size=shard_size, overwrite=True,
    ) as writer:  # fmt: skip
        write_examples(writer, examples)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--after", type=Path, default=ROOT, help="the code after (a checkout)")
    parser.add_argument("--buffer", type=int, default=1024, help="the mixing buffer (examples)")
    parser.add_argument("--shard-size", type=int, default=256, help="precompute's default")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-examples", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.run_examples, args.buffer)))
        return
    variants: list[tuple[str, Path, int | None]] = []
    if args.before is not None:
        variants.append(("before (shards, ~16 MiB runs)", args.before.resolve(), None))
    variants += [(f"after, run_examples={r}", args.after.resolve(), r) for r in args.runs]
    rows = []
    for kind in ("hidden", "attention"):
        cache = _build_cache(kind, args.examples, args.shard_size)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
        for _ in range(args.repeats):  # interleaved: each repeat runs every variant once
            for name, code, run_examples in variants:
                samples[name].append(_measure(code, cache, run_examples, args.buffer))
        base = statistics.median(s["seconds"] for s in samples[variants[0][0]])
        base_cpu = statistics.median(s["cpu"] for s in samples[variants[0][0]])
        for name, _, _ in variants:
            seconds = statistics.median(s["seconds"] for s in samples[name])
            cpu = statistics.median(s["cpu"] for s in samples[name])
            first = samples[name][0]
            rows.append(
                {
                    "kind": kind,
                    "variant": name,
                    "seconds": seconds,
                    "ratio": seconds / base,
                    "cpu_seconds": cpu,
                    "cpu_ratio": cpu / base_cpu,
                    "decoded_per_chunk": first["decoded"] / first["chunks"],
                }
            )
    print(f"{args.examples} examples, shards of {args.shard_size}, buffer_size {args.buffer}")
    print(
        f"| kind | order | epoch s (median of {args.repeats}) | / first row | CPU s | / first "
        "row | decoded / chunks |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['kind']} | {row['variant']} | {row['seconds']:.2f} | {row['ratio']:.2f} | "
            f"{row['cpu_seconds']:.2f} | {row['cpu_ratio']:.2f} | {row['decoded_per_chunk']:.2f} |"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
