"""Codec choice per feature kind: size and one-thread decode speed of the same chunks.

Usage: ``make bench-codecs`` (or ``python benchmarks/codec_choice.py CACHE [CACHE ...]
[--repeats R] [--max-mb M]``). Prints a Markdown table and writes
``runs/bench-codecs/results.json``.

Every chunk of a cache's arrays is decoded to its stored bytes (fp16 etc.) once, grouped by
feature kind (``hidden``, ``attention``, ``logits`` ...; at most ``--max-mb`` per kind), then
re-encoded with each candidate codec: so all candidates see exactly the same bytes, in the
cache's own chunking. Decode speed is numcodecs decoding every compressed chunk into one
preallocated buffer in one thread (Blosc's own threads off), the limit the reader works
against; the median of ``--repeats`` passes, codecs interleaved within each pass because the
shared box's load varies by +-30 % between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
from common import ROOT

from cachebrew.cache import open_cache

OUT = ROOT / "runs" / "bench-codecs"


def candidates() -> dict[str, Any]:
    """Codec name -> numcodecs codec (None: stored uncompressed)."""
    blosc = numcodecs.Blosc
    return {
        "none": None,
        "zstd-1": numcodecs.Zstd(level=1),
        "zstd-3": numcodecs.Zstd(level=3),
        "blosc-lz4-shuffle": blosc("lz4", 5, blosc.SHUFFLE),
        "blosc-lz4-bitshuffle": blosc("lz4", 5, blosc.BITSHUFFLE),
        "blosc-zstd1-shuffle": blosc("zstd", 1, blosc.SHUFFLE),
        "blosc-zstd1-bitshuffle": blosc("zstd", 1, blosc.BITSHUFFLE),
    }


def stored_chunks(cache: Path, max_bytes: int) -> dict[str, list[np.ndarray]]:
    """Feature kind -> the stored (decoded, not cast) chunks of its arrays."""
    reader = open_cache(cache)
    chunks: dict[str, list[np.ndarray]] = {}
    for k in range(reader.num_shards):
        shard = reader.shard(k)
        for name, info in shard.meta["arrays"].items():
            kind = name.split(".", 1)[0] if not name.startswith("logits") else "logits"
            have = chunks.setdefault(kind, [])
            for start in range(0, info["rows"], info["chunk_rows"]):
                if sum(c.nbytes for c in have) >= max_bytes:
                    break
                stop = min(start + info["chunk_rows"], info["rows"])
                have.append(np.ascontiguousarray(shard.read_rows(name, start, stop)))
    return chunks


def measure(chunks: list[np.ndarray], repeats: int) -> dict[str, dict[str, float]]:
    """Per codec: stored/compressed size ratio and one-thread decode MB/s (decoded bytes)."""
    codecs = candidates()
    encoded = {
        name: [c.tobytes() if codec is None else codec.encode(c) for c in chunks]
        for name, codec in codecs.items()
    }
    decoded = sum(c.nbytes for c in chunks)
    out = np.empty(max(c.nbytes for c in chunks), dtype=np.uint8)
    times: dict[str, list[float]] = {name: [] for name in codecs}
    for _ in range(repeats):
        for name, codec in codecs.items():
            start = time.perf_counter()
            for payload, chunk in zip(encoded[name], chunks, strict=True):
                target = out[: chunk.nbytes]
                if codec is None:
                    target[:] = np.frombuffer(payload, dtype=np.uint8)
                else:
                    codec.decode(payload, out=target)
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "ratio": decoded / sum(len(p) for p in encoded[name]),
            "decode_mb_s": decoded / 1e6 / statistics.median(times[name]),
        }
        for name in codecs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-mb", type=float, default=24)
    args = parser.parse_args()
    numcodecs.blosc.set_nthreads(1)
    numcodecs.blosc.use_threads = False
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for cache in args.caches:
        for kind, chunks in stored_chunks(cache, int(args.max_mb * 1e6)).items():
            row = measure(chunks, args.repeats)
            results[f"{cache.name}/{kind}"] = {
                "stored_mb": sum(c.nbytes for c in chunks) / 1e6,
                "dtype": str(chunks[0].dtype),
                "codecs": row,
            }
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def render(results: dict[str, Any]) -> str:
    names = list(candidates())
    lines = [
        "compression ratio (stored bytes / compressed) and one-thread decode MB/s of stored bytes",
        "",
        "| cache/kind | MB | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for key, row in results.items():
        cells = [f"{c['ratio']:.2f}x {c['decode_mb_s']:,.0f}" for c in row["codecs"].values()]
        lines.append(
            f"| {key} ({row['dtype']}) | {row['stored_mb']:.0f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
