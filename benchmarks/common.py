"""Helpers the benchmark scripts share: the forward-only baseline precompute is measured against."""

from __future__ import annotations

import time
from typing import Any

import torch


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
