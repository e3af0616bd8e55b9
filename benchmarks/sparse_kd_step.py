"""Sparse KD step time against a hard-label-only step (issue 14 goal: within 1.2x at V = 16k).

``python benchmarks/sparse_kd_step.py [--vocab 16000] [--repeats 15] [--threads 1]``: a small
causal student (GPT-2 shape: 2 layers, width 256, 4 heads, fresh weights) at V = 16,000, batch
8 x 128 tokens (1,016 predicted positions), one forward + backward of

- ``hard``: the hard-label LM loss (next-token cross-entropy);
- ``hard + topk:128``: ``0.5 hard + 0.5 top-k tail KD`` (T = 2) against top-128 rows;
- ``hard + topk:128:q4``: the same on rows read from the lossy 4-bit value code;
- ``hard + sample:12``: ``0.5 hard + 0.5 random-sampling KD`` (T = 1, the sampling T).

The teacher rows are made once (random teacher logits through the cache's own prepare /
encode / decode path: cachebrew.cache.logits.sparse.sparse_arrays and read_sparse_logits), so
the step times only the student and the losses. Variants run round robin (so load drifts hit
all alike) and are timed in process CPU time (one thread: CPU seconds do not stretch when other
jobs take the shared cores the way wall seconds do); the median of the repeats and each
median's ratio to ``hard`` in the same run are printed with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cachebrew.cache.format.codecs import decode, encode
from cachebrew.cache.format.spec import FeatureSpec, StoredFeature
from cachebrew.cache.logits.sparse import SparseLogits, parse_logits_mode, read_sparse_logits
from cachebrew.cache.write.prepare import prepare_example
from cachebrew.distill.sparse_kd import sparse_kd_loss

BATCH, LENGTH = 8, 128


def teacher_rows(mode: str, rows: int, vocab: int) -> SparseLogits:
    """Sparse teacher rows of ``mode`` through the cache's encode/decode path."""
    logits = (np.random.default_rng(0).standard_normal((rows, vocab)) * 3).astype(np.float32)
    feature = StoredFeature("logits", logits_mode=mode, vocab_size=vocab)
    arrays = prepare_example(FeatureSpec((feature,)), {"logits": logits}, rows)
    decoded = {}
    for name, array in arrays.items():
        dtype = feature.array_dtype(name)
        decoded[name] = torch.from_numpy(np.array(decode(encode(array, dtype)[0], None, dtype)))
    return read_sparse_logits(decoded, parse_logits_mode(mode), vocab, "raw")


def main() -> None:
    """Print the table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=16_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=args.vocab, n_positions=LENGTH, n_embd=256, n_layer=2, n_head=4)
    student = GPT2LMHeadModel(config)
    input_ids = torch.randint(0, args.vocab, (BATCH, LENGTH))
    labels = input_ids[:, 1:].reshape(-1)
    rows = len(labels)
    teachers = {m: teacher_rows(m, rows, args.vocab) for m in ("topk:128", "topk:128:q4")}
    teachers["sample:12"] = teacher_rows("sample:12", rows, args.vocab)

    def step(mode: str | None) -> Callable[[], None]:
        def run() -> None:
            student.zero_grad(set_to_none=True)
            logits = student(input_ids).logits[:, :-1].reshape(rows, args.vocab)
            loss = F.cross_entropy(logits, labels)
            if mode is not None:
                temperature = 1.0 if mode.startswith("sample") else 2.0
                kd = sparse_kd_loss(logits, teachers[mode], temperature)
                loss = 0.5 * loss + 0.5 * kd
            loss.backward()

        return run

    variants = {"hard": step(None), **{f"hard + {m}": step(m) for m in teachers}}
    for run in variants.values():  # warm-up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.process_time()
            run()
            seconds[name].append(time.process_time() - start)
    base = statistics.median(seconds["hard"])
    print(
        f"V = {args.vocab:,}, {rows} positions per step, {args.threads} thread(s), CPU time, median of "
        f"{args.repeats}; load average {load:.2f} -> {os.getloadavg()[0]:.2f}\n"
    )
    print("| step | median CPU ms | ratio to hard |\n|---|---|---|")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"| {name} | {1000 * median:.1f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
