"""``topk:K`` and ``sample:N`` taken on the teacher's side, on raw logits, in row chunks.

A language model's (B, L, V) logits are the biggest tensor of its forward. Handing each
example's (rows, V) logits to the writer (which then built a (rows, V) log-prob copy) held
several copies of them at once, in fp32, on the host. Here the top-k (``torch.topk``) and the
full-vocabulary log-sum-exp are taken on the device, ``chunk_rows`` rows at a time (Megatron-LM's
offline-logits saver takes its top-k on raw logits first), so the largest temporary is
(chunk_rows, V); only (rows, K) ids and values and a (rows, 1) log-sum-exp leave. ``sample:N``
draws on the host from the same chunks with :func:`~cachebrew.cache.logits.sparse.sample_rows`
(so the draws are the ones the writer would make: seeded by each row's fp32 bytes).

The writer turns these reduced rows into the stored arrays
(:func:`~cachebrew.cache.logits.sparse.topk_arrays`): the same arrays, within fp32 rounding of
the log-sum-exp, as from the dense rows (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cachebrew.cache.logits.sparse import REDUCED_KEYS, LogitsMode, sample_rows

#: the largest (rows, V) fp32 block, in elements (128 MB: 1,048 rows of a 32k vocabulary). On
#: CPU, torch's topk and logsumexp are never faster per row on small blocks, and several times
#: slower on 8-128 rows under load (BENCHMARKS.md, "Models at real size"); an eighth of a 4 x 2,048-token
#: batch's logits is a cheap temporary.
CHUNK_ELEMENTS = 1 << 25


def chunk_rows_for(vocab_size: int) -> int:
    """Rows per chunk so a (rows, V) fp32 block stays within :data:`CHUNK_ELEMENTS`."""
    return max(1, CHUNK_ELEMENTS // max(vocab_size, 1))


def reduce_rows(logits: torch.Tensor, mode: LogitsMode) -> dict[str, Any]:
    """Reduce (rows, V) raw logits to what a ``topk``/``sample`` cache keeps.

    Args:
        logits: (rows, V) raw logits on any device, any float dtype.
        mode: the parsed ``--logits`` mode, ``topk`` or ``sample``.

    Returns:
        ``topk``: ``{"topk_ids": (rows, K) int64 largest first, "topk_raw": (rows, K) fp32 raw
        logits, "logsumexp": (rows, 1) fp32}`` as tensors on ``logits``' device; ``sample``:
        ``{"sample_ids", "sample_counts"}`` (rows, N) int64 CPU tensors.

    Raises:
        ValueError: K larger than the vocabulary.
    """
    rows, vocab = logits.shape
    step = chunk_rows_for(vocab)
    if mode.kind == "topk":
        if (mode.size or 0) > vocab:
            raise ValueError(f"topk:{mode.size} is larger than the {vocab} logits")
        parts = [_topk_chunk(logits[i : i + step], mode.size or 1) for i in range(0, rows, step)]
    else:
        parts = [_sample_chunk(logits[i : i + step], mode) for i in range(0, rows, step)]
    keys = REDUCED_KEYS[mode.kind]
    if not parts:
        return {key: logits.new_zeros((0, 1)) for key in keys}
    return {key: torch.cat([part[key] for part in parts]) for key in keys}


def _topk_chunk(block: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    block = block.float()  # (c, V); no copy for fp32 logits
    values, ids = block.topk(k, dim=1)  # (c, k), largest first
    return {"topk_ids": ids, "topk_raw": values, "logsumexp": torch.logsumexp(block, 1, True)}


def _sample_chunk(block: torch.Tensor, mode: LogitsMode) -> dict[str, torch.Tensor]:
    host = np.ascontiguousarray(block.float().cpu().numpy())  # (c, V) fp32: the seed's bytes
    ids, counts = sample_rows(host, mode.size or 1, mode.temperature)
    return {"sample_ids": torch.from_numpy(ids), "sample_counts": torch.from_numpy(counts)}
