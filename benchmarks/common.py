"""Helpers the benchmark scripts share: the BERT-base-shaped teacher, its 128-token corpus and the
forward-only baseline that precompute is measured against."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def forward_only_seconds(
    loaded: Any, records: list[Any], *, max_length: int, batch_size: int, shard_size: int
) -> float:
    """Seconds for the bare teacher forward over exactly the batches ``precompute`` runs.

    ``precompute`` tokenizes each shard window of ``shard_size`` records and cuts it into
    length-bucketed batches; this does the same and only calls the model (no feature
    extraction, no encoding, no writing): the baseline that the background writer must hide.
    """
    from cachebrew.corpus import length_bucketed_batches, pad_batch, tokenize_records

    inputs = ("input_ids", "attention_mask", "token_type_ids")
    pad_id = loaded.tokenizer.pad_token_id or 0
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(records), shard_size):
            items = tokenize_records(
                records[first : first + shard_size], loaded.tokenizer, max_length
            )
            lengths = [len(item["input_ids"]) for item in items]
            for batch in length_bucketed_batches(lengths, batch_size):
                padded = pad_batch(
                    [{k: items[i][k] for k in inputs if k in items[i]} for i in batch], pad_id
                )
                loaded.model(**padded)
    return time.perf_counter() - start


def bert_base_teacher(out: Path) -> Path:
    """``out/bert-base``: BERT-base's shape with fresh weights (seed 0) and MiniLM's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = ROOT / "data" / "minilm" / "tokenizer.json"
    if not tokenizer.exists():
        sys.exit(
            "needs data/minilm/tokenizer.json: run `cachebrew data prepare --all --out data` first"
        )
    path = out / "bert-base"
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=3))  # BERT-base defaults
    model.save_pretrained(path)
    shutil.copy(tokenizer, path / "tokenizer.json")
    return path


def long_corpus(out: Path, n: int) -> Path:
    """``n`` texts of 12 consecutive VADER sentences each: nearly all fill 128 tokens."""
    source = ROOT / "data" / "sentiment" / "train.jsonl"
    if not source.exists():
        sys.exit("needs data/sentiment: run `cachebrew data prepare --all --out data` first")
    sentences = [json.loads(line)["text"] for line in source.read_text().splitlines()]
    path = out / "corpus.jsonl"
    with path.open("w") as f:
        for i in range(n):
            text = " ".join(sentences[12 * i : 12 * i + 12])
            f.write(json.dumps({"id": f"long{i}", "text": text, "label": i % 3}) + "\n")
    return path
