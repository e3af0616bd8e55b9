"""Reader benchmark: one ``CacheDataset`` epoch against the raw codec decode of the same chunks.

Usage: ``make bench-reader`` (or ``python benchmarks/reader_speed.py [--examples N] [--repeats
R] [--codec zstd] [--cache PATH ...]``). Prints a Markdown table and writes
``runs/bench-reader/results.json``. ``--cache`` adds a real cache as one more row (all its
arrays together; ``make bench-reader`` passes the demo's MiniLM cache when it exists).

The caches are BERT-base-shaped (768 hidden, 12 heads, lengths uniform in [26, 128], fp16) and
synthetic: Gaussian hidden states with a per-dimension offset and softmax attention rows, which
compress like fresh-weight teacher outputs (zstd-1: ~1.09x hidden, ~1.3x attention). One cache
per feature kind, so each row of the table reads exactly one kind:

- ``codec 1t`` / ``codec 2t``: numcodecs decodes every chunk file's bytes (read into memory
  first) into one preallocated buffer, in 1 thread / a pool of 2 threads. This machine's limit
  for that codec.
- ``reader 1t`` / ``reader 2t``: one ``CacheDataset`` epoch in shuffled batches of 16 (every
  array decoded, crc32 checked, collated into padded float32 tensors), ``decode_threads`` 1 / 2.
- ``floor 1t`` (CPU-time table): decode into kept buffers plus the fp16 -> float32 cast of
  the same bytes, one thread: the memory traffic a float32 reader cannot avoid.
- ``packed 1t`` / ``packed 2t``: the CPU side of the CUDA path (``cache/feed/gpu_feed.py``), one
  thread / 2 decode threads: each array's stored rows gathered unpadded into one reused host
  buffer (pinned where torch has a pinned allocator, ordinary memory on a CPU-only build; the
  table says which), in parallel for large arrays; padding and cast happen on the GPU. What a
  GPU student can be fed. ``GPU feed`` projects ``packed 2t`` onto an all-layer BERT-base
  example (13 hidden + 12 attention layers, 128 tokens, fp16: 7.27 MB) against the 533
  examples/s a batch of 16 needs at a 30 ms step. (Until issue 15's fifth pass the table also
  had the old CUDA path, padded in the stored dtype then ``pin_memory()``; that path is gone.)

Blosc's own threads are off (``numcodecs.blosc.use_threads = False``) so "one thread" is one.

Ratios (codec seconds / reader seconds) come from the same run, interleaved, median of
``--repeats``: the shared 2-core box varies by +-30 % between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import torch
from common import ROOT

from cachebrew.cache import CacheWriter, open_cache, parse_feature_spec
from cachebrew.cache.feed.batch_copy import _cast_copy
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.feed.gpu_feed import PinnedPool, pack_rows
from cachebrew.cache.read.epoch_reader import ChunkCache, EpochReader
from cachebrew.errors import CacheError

# the synthetic cache generator is shared with the tests (tests/helpers/synthetic_cache.py)
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
from synthetic_cache import synthetic_examples, write_examples  # noqa: E402

try:
    from cachebrew.cache.feed.batch_copy import copy_pool
except ImportError:  # code before the fifth pass: every batch's arrays in parallel

    def copy_pool(pool: Any, features: Any, names: Any) -> Any:
        return pool


OUT = ROOT / "runs" / "bench-reader"
KINDS = {"hidden": "hidden:0,6,12", "attention": "attention:5,11"}


def build_cache(kind: str, codec: str, num_examples: int) -> Path:
    """The cache of one feature kind (reused when it exists)."""
    path = OUT / f"{kind}-{codec}"
    if (path / "manifest.json").exists():
        return path
    spec = parse_feature_spec(KINDS[kind], dtype="fp16", codec=codec)
    examples = synthetic_examples(
        spec, num_examples, seed=0, min_length=26, max_length=128, hidden_size=768, num_heads=12
    )
    with CacheWriter(
        path, spec, teacher_info={"class": "synthetic"}, corpus_fingerprint="bench", shard_size=64
    ) as writer:
        write_examples(writer, examples)
    return path


def chunk_payloads(cache: Path) -> tuple[list[bytes], int, Any, int]:
    """Every stored chunk's bytes, the largest decoded chunk size, the numcodecs codec, and
    the decoded bytes of all chunks (each chunk decodes to its full chunk shape)."""
    reader = open_cache(cache)
    payloads, chunk_nbytes, decoded = [], 0, 0
    for k in range(reader.num_shards):
        shard = reader.shard(k)
        for name, info in shard.meta["arrays"].items():
            itemsize = np.dtype(info["stored_dtype"]).itemsize
            nbytes = info["chunk_rows"] * info["width"] * itemsize
            chunk_nbytes = max(chunk_nbytes, nbytes)
            folder = Path(shard.path) / name / "c"
            files = [p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()]
            payloads += files
            decoded += len(files) * nbytes
    codecs = {feature.codec for feature in reader.spec}
    if len(codecs) != 1:
        raise SystemExit(f"{cache}: features use several codecs ({sorted(codecs)}); need one")
    return payloads, chunk_nbytes, _codec(codecs.pop()), decoded


def _codec(name: str) -> Any:
    from cachebrew.cache.format.codecs import CODEC_CONFIGS

    config = CODEC_CONFIGS[name]
    if config["name"] == "zstd":
        return numcodecs.Zstd(level=config["configuration"]["level"])
    if config["name"] == "blosc":
        return numcodecs.Blosc()  # decoding reads cname and shuffle from the frame header
    return None


Timing = tuple[float, float]  # (wall seconds, CPU seconds of the process)


def _clock() -> Timing:
    return time.perf_counter(), time.process_time()


def _since(start: Timing) -> Timing:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def codec_seconds(payloads: list[bytes], chunk_nbytes: int, codec: Any, threads: int) -> Timing:
    """Decode every payload into a preallocated buffer per thread."""
    buffers = [np.empty(chunk_nbytes, dtype=np.uint8) for _ in range(threads)]

    def decode(part: int) -> None:
        out = buffers[part]
        for payload in payloads[part::threads]:
            if codec is None:
                out[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
            else:
                codec.decode(payload, out=out)

    start = _clock()
    if threads == 1:
        decode(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(decode, range(threads)))
    return _since(start)


def floor_seconds(payloads: list[bytes], chunk_nbytes: int, codec: Any) -> Timing:
    """The memory traffic a float32 reader cannot avoid, one thread: decode every payload into
    its own kept buffer (the reader keeps chunks until their examples are emitted), then cast
    it fp16 -> float32 into its own kept output (the batch), as the reader's copy does; both
    touched beforehand, so no page faults. No crc32, no padding, no shuffle."""
    kept = [np.ones(chunk_nbytes, dtype=np.uint8) for _ in payloads]
    outs = [torch.ones(chunk_nbytes // 2, dtype=torch.float32) for _ in payloads]
    start = _clock()
    for payload, buffer, out in zip(payloads, kept, outs, strict=True):
        if codec is None:
            buffer[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        else:
            codec.decode(payload, out=buffer)
        _cast_copy(out, torch.from_numpy(buffer.view(np.float16)))
    return _since(start)


def reader_seconds(cache: Path, threads: int) -> tuple[Timing, Timing]:
    """Two shuffled CacheDataset epochs of one dataset (batches of 16, every array decoded and
    collated): the first (a new reader: every chunk's crc32 checked) and the next."""
    kwargs: dict[str, Any] = {"decode_threads": threads} if _has_threads() else {}
    dataset = CacheDataset(open_cache(cache), batch_size=16, **kwargs)
    seconds = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        start = _clock()
        for _ in dataset:
            pass
        seconds.append(_since(start))
    return seconds[0], seconds[1]


def packed_seconds(cache: Path, threads: int) -> tuple[Timing, Timing]:
    """The CUDA path's CPU side of two epochs (first, next): decode, then gather each array's
    stored rows unpadded into one reused host buffer (the packed path of
    ``cache/feed/gpu_feed.py``; pinned only where torch has a pinned allocator), with the memory
    reuse and the parallel copies of the dataset's own iteration."""
    dataset = CacheDataset(open_cache(cache), batch_size=16)
    layout = dataset.layout
    assert layout is not None
    names = (*layout.hidden.values(), *layout.attention.values())
    pinned = PinnedPool(slots=2 * len(names))
    seconds = []
    for epoch in range(2):
        start = _clock()
        with ThreadPoolExecutor(threads) as pool:
            decoders = pool if threads > 1 else None
            chunks = ChunkCache(4 * dataset.window_bytes, decoders, dataset._chunk_blocks)
            plan = dataset.plan(epoch)
            reader = EpochReader(dataset.reader, plan, layout.stored_arrays, chunks, cast=False)
            for examples in reader.batches(range(len(dataset)), 16):

                def pack(name: str, examples: Any = examples) -> Any:
                    rows = [e["features"][name] for e in examples]
                    buffer = pinned.take(sum(r.nbytes + 8 for r in rows))
                    pack_rows(rows, buffer)
                    return buffer

                features = [e["features"] for e in examples]
                parallel = copy_pool(decoders, features, names)  # as collate packs for CUDA
                packed = list(parallel.map(pack, names) if parallel else map(pack, names))
                for buffer in packed:  # on a GPU: released with the copy's event
                    pinned.release(buffer, None)
        seconds.append(_since(start))
    return seconds[0], seconds[1]


# An all-layer BERT-base example at 128 tokens, fp16, and the rate a 30 ms step of 16 needs.
BERT_BASE_EXAMPLE_MB = (13 * 128 * 768 + 12 * 12 * 128 * 128) * 2 / 1e6
NEEDED_EXAMPLES_S = 16 / 0.030


def _has_threads() -> bool:
    import inspect

    return "decode_threads" in inspect.signature(CacheDataset).parameters


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--codec", default="lz4-bitshuffle")
    parser.add_argument(
        "--cache",
        action="append",
        default=[],
        help="also measure this real cache (all its arrays in one row; repeatable)",
    )
    args = parser.parse_args()
    for cache in args.cache:  # before the synthetic rows spend their minute
        try:
            open_cache(cache)
        except CacheError as e:
            raise SystemExit(f"--cache {cache}: {e}") from None
    numcodecs.blosc.use_threads = False
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"codec": args.codec, "examples": args.examples, "kinds": {}}
    caches = {kind: build_cache(kind, args.codec, args.examples) for kind in KINDS}
    caches.update({f"{Path(c).parent.name}/{Path(c).name}": Path(c) for c in args.cache})
    for kind, cache in caches.items():
        payloads, chunk_nbytes, codec, decoded = chunk_payloads(cache)
        reader_seconds(cache, 1)  # warm the page cache and imports
        row: dict[str, float] = {"decoded_mb": decoded / 1e6}
        for threads in (1, 2):
            times: dict[str, list[float]] = {}
            for _ in range(args.repeats):  # interleaved: all see the same load
                runs = {"codec": (codec_seconds(payloads, chunk_nbytes, codec, threads),)}
                if threads == 1:
                    runs["floor"] = (floor_seconds(payloads, chunk_nbytes, codec),)
                runs["reader"] = reader_seconds(cache, threads)
                runs["packed"] = packed_seconds(cache, threads)
                for what, (first, *later) in runs.items():
                    for clock, suffix in ((0, "s"), (1, "cpu_s")):
                        key = f"{what}_{threads}t"
                        times.setdefault(f"{key}_first_{suffix}", []).append(first[clock])
                        last = later[0] if later else first
                        times.setdefault(f"{key}_{suffix}", []).append(last[clock])
            row.update({key: statistics.median(values) for key, values in times.items()})
        results["kinds"][kind] = row
        results["load_average"] = os.getloadavg()
    results["pinned"] = torch.cuda.is_available()
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def render(results: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in results.get("load_average", ()))
    pinned = "pinned" if results.get("pinned") else "ordinary (no pinned allocator: CPU-only torch)"
    lines = [
        f"codec {results['codec']}, {results['examples']} examples, medians (MB/s of stored "
        "bytes decoded; ratio = codec 1t seconds / reader seconds; 'first' = the first epoch "
        f"of a new reader, crc32 checked; load average at the end {load}). reader = the CPU "
        f"float32 batches; packed = the CUDA path's CPU side ({pinned} host memory); GPU feed "
        f"= packed 2t MB/s / {BERT_BASE_EXAMPLE_MB:.2f} MB per all-layer BERT-base example, "
        f"against {NEEDED_EXAMPLES_S:.0f} ex/s for a 30 ms step of 16",
        "",
        "| kind | stored MB | codec 1t | codec 2t | reader 1t | reader 2t | packed 1t | packed 2t "
        "| reader 1t first / codec | reader 1t / codec | reader 2t / codec "
        "| packed 1t / codec | packed 2t first / codec | packed 2t / codec | GPU feed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in results["kinds"].items():
        mb = row["decoded_mb"]
        keys = ("codec_1t_s", "codec_2t_s", "reader_1t_s", "reader_2t_s", "packed_1t_s")
        speeds = [mb / row[k] for k in (*keys, "packed_2t_s")]
        ratio_keys = ("reader_1t_first_s", "reader_1t_s", "reader_2t_s", "packed_1t_s")
        ratio_keys += ("packed_2t_first_s", "packed_2t_s")
        ratios = [row["codec_1t_s"] / row[k] for k in ratio_keys]
        feed = speeds[-1] / BERT_BASE_EXAMPLE_MB
        cells = [f"{mb:.0f}", *(f"{s:,.0f}" for s in speeds), *(f"{r:.2f}" for r in ratios)]
        cells.append(f"{feed:,.0f} / {NEEDED_EXAMPLES_S:.0f} ex/s")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "One thread by CPU time (process_time: what the load of other jobs changes least)",
        "",
        "| kind | codec 1t CPU s | floor 1t CPU s | reader 1t first CPU s | reader 1t CPU s "
        "| reader 1t first / codec | reader 1t / codec | floor / codec | reader 1t / floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in results["kinds"].items():
        keys = ("codec_1t_cpu_s", "floor_1t_cpu_s", "reader_1t_first_cpu_s", "reader_1t_cpu_s")
        codec_s, floor_s, first_s, reader_s = (row[k] for k in keys)
        cells = [f"{row[k]:.4f}" for k in keys]
        ratios = (codec_s / first_s, codec_s / reader_s, codec_s / floor_s, floor_s / reader_s)
        cells += [f"{r:.2f}" for r in ratios]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
