"""Scale-out measurements: torchrun precompute 2 x 1 thread against 1 process x 2 threads, and
reading a cache from a loopback S3 server (moto) against the local disk.

    PYTHONPATH=. python benchmarks/scale_out.py [--examples 512] [--out runs/bench-scale-out]

Self-contained: a BERT-shaped teacher (4 layers, hidden 256, fresh weights) and a random-word
corpus are built in the output directory. Prints one JSON object and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORDS = [f"w{i}" for i in range(400)]


def build_inputs(root: Path, examples: int) -> tuple[Path, Path]:
    """A saved teacher with its tokenizer, and a jsonl corpus of ~60-token texts."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification

    teacher = root / "teacher"
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=128,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(teacher)
    tokenizer.save(str(teacher / "tokenizer.json"))
    (teacher / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]"})
    )
    rng = random.Random(0)
    corpus = root / "corpus.jsonl"
    lines = [
        json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(40, 80))), "label": i % 3})
        for i in range(examples)
    ]
    corpus.write_text("\n".join(lines) + "\n")
    return teacher, corpus


def timed_precompute(launcher: list[str], threads: int, args: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    subprocess.run([*launcher, *args], check=True, env=env, capture_output=True, timeout=3600)
    return time.perf_counter() - start


def read_seconds(path: str) -> tuple[float, int]:
    from cachebrew.cache import open_cache

    start = time.perf_counter()
    reader = open_cache(path)
    count = sum(1 for _ in reader.iter_examples())
    return time.perf_counter() - start, count


def s3_read(local: Path) -> dict[str, Any]:
    """Copy the cache to a loopback moto server and time a full streaming read of both."""
    import fsspec
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        fs = fsspec.filesystem("s3")
        fs.mkdir("bench")
        fs.put(str(local), "bench/cache", recursive=True)
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        local_s, n = read_seconds(str(local))
        s3_s, _ = read_seconds("s3://bench/cache")
    finally:
        server.stop()
    return {
        "examples": n,
        "bytes": size,
        "local_s": local_s,
        "s3_s": s3_s,
        "local_mb_per_s": size / local_s / 1e6,
        "s3_mb_per_s": size / s3_s / 1e6,
        "s3_over_local_time": s3_s / local_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--out", default="runs/bench-scale-out")
    opts = parser.parse_args()
    root = Path(opts.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    teacher, corpus = build_inputs(root, opts.examples)

    def args(out: str) -> list[str]:
        return [
            "precompute",
            "--teacher",
            str(teacher),
            "--data",
            str(corpus),
            "--out",
            out,
            "--label-field",
            "label",
            "--features",
            "logits,hidden:2,4",
            "--shard-size",
            "32",
            "--batch-size",
            "16",
            "--quiet",
            "--device",
            "cpu",
        ]

    python = [sys.executable, "-m", "cachebrew"]
    torchrun = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cachebrew",
    ]
    one = timed_precompute(python, 2, args(str(root / "one")))
    two = timed_precompute(torchrun, 1, args(str(root / "two")))
    subprocess.run([*python, "compare", str(root / "one"), str(root / "two")], check=True)
    results = {
        "examples": opts.examples,
        "precompute_1proc_2threads_s": one,
        "precompute_2procs_1thread_s": two,
        "speedup_2procs_over_2threads": one / two,
        "s3_read": s3_read(root / "one"),
    }
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
