"""``--logits exact`` at V = 151,936, H = 896 (Qwen2-0.5B's shape): bytes/token, head size, and
one KD step (forward + backward) against the dense rebuild, peak memory and time.

- bytes/token: ``logits.hidden`` rows (random normal, fp16) encoded as the cache stores them
  (codecs.encode + the default codec over one block); the head is stored once per cache.
- step: TextBrewer ``ce`` at T = 2 of (rows, V) student logits against (a) ``exact_kd_loss``
  (vocabulary chunks, cachebrew.distill.exact_kd) and (b) the dense rebuild
  ``kd_ce_loss(z, h W^T)``. Peak = the largest running total of CPU tensor allocations in the
  step (torch.profiler, profile_memory). Time = median of alternating repeats, per thread count.

``python benchmarks/exact_kd.py [ROWS]`` (default 128). Prints markdown.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numcodecs import Blosc
from torch.profiler import ProfilerActivity, profile

from cachebrew.cache.format.codecs import encode
from cachebrew.cache.logits.exact import ExactLogits, LMHead
from cachebrew.distill.exact_kd import exact_kd_loss
from cachebrew.losses import kd_ce_loss

VOCAB, HIDDEN = 151_936, 896


def peak_bytes(step: Callable[[], None]) -> int:
    """Peak CPU tensor bytes allocated during ``step()`` (profiler trace, running total)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]"]
    baseline = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(m["Total Allocated"] for m in memory) - baseline


def hidden_bytes_per_token(rows: int) -> float:
    """Encoded fp16 bytes/token of random-normal hidden rows with the default codec."""
    hidden = np.random.default_rng(0).normal(size=(rows, HIDDEN)).astype(np.float32)
    stored, _ = encode(hidden, "fp16")
    codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)
    return len(codec.encode(np.ascontiguousarray(stored))) / rows


def main() -> None:
    """Print the tables."""
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(VOCAB, HIDDEN, generator=g) / HIDDEN**0.5
    teacher = ExactLogits(torch.randn(rows, HIDDEN, generator=g).half().float(), LMHead(weight))
    z = torch.randn(rows, VOCAB, generator=g).requires_grad_()
    steps = {
        "exact (chunks of 4,096 ids)": lambda: exact_kd_loss(z, teacher, 2.0).backward(),
        "dense rebuild + kd_ce_loss": lambda: kd_ce_loss(z, teacher.dense(), 2.0).backward(),
    }
    print(f"V = {VOCAB:,}, H = {HIDDEN}, {rows} rows, load average {os.getloadavg()[0]:.1f}\n")
    per_token = hidden_bytes_per_token(rows)
    print(f"hidden fp16: {HIDDEN * 2} B/token raw, {per_token:.0f} B/token lz4-bitshuffle "
          f"(random normal); head once: {VOCAB * HIDDEN * 2 / 1e6:.0f} MB bf16/fp16, "
          f"{VOCAB * HIDDEN * 4 / 1e6:.0f} MB fp32; dense fp16 logits {VOCAB * 2:,} B/token\n")  # fmt: skip
    one = rows * VOCAB * 4
    print("| step | peak MB | x (rows, V) fp32 | s, 1 thread | s, 2 threads |")
    print("|---|---|---|---|---|")
    results: dict[str, list[float]] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(3):  # alternate, so load changes hit both alike
            for name, step in steps.items():
                z.grad = None
                start = time.perf_counter()
                step()
                results.setdefault(f"{name}/{threads}", []).append(time.perf_counter() - start)
    torch.set_num_threads(1)
    for name, step in steps.items():
        z.grad = None
        peak = peak_bytes(step)
        t1 = statistics.median(results[f"{name}/1"])
        t2 = statistics.median(results[f"{name}/2"])
        print(f"| {name} | {peak / 1e6:.0f} | {peak / one:.2f} | {t1:.2f} | {t2:.2f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
