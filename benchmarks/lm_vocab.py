"""Bytes/token of ``--logits topk:K`` and ``sample:N`` at V = 151,936 on Zipf-shaped rows.

Rows imitate a trained LM (not uniform random logits, whose ids would not compress like real
ones): each position's log-probs over vocabulary *ranks* follow ``-1.1 * log(rank)`` plus
Gaussian noise (sd 1.5), and ranks map to ids through a frequency-ordered vocabulary (BPE ids
roughly follow corpus frequency) shuffled locally (each id within ~5 % of its rank), with a
context-dependent set of 32 boosted ids per row. Stored exactly as the cache stores them
(cachebrew.cache.prepare + codecs.encode, zstd-1 per 2,048-token block), top-k in both layouts
(1: by value, 18-bit ids; 2: by id, delta ids and fp16 byte planes). Prints a markdown table
and the KL(reconstructed || original) of the stored top-k rows. ``make bench-lm``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from numcodecs import Zstd

from cachebrew.cache.codecs import encode
from cachebrew.cache.prepare import prepare_example
from cachebrew.cache.spec import FeatureSpec, StoredFeature

VOCAB = 151_936
TOKENS = 2_048


def zipf_rows(tokens: int, vocab: int, seed: int = 0) -> np.ndarray:
    """(tokens, vocab) float32 logits with a Zipf-shaped, frequency-ordered distribution."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1)
    jitter = rng.normal(0, 0.05 * ranks)  # a frequency-ordered vocabulary, locally shuffled
    id_of_rank = np.argsort(ranks + jitter)
    rows = np.empty((tokens, vocab), dtype=np.float32)
    for t in range(tokens):
        by_rank = -1.1 * np.log(ranks) + rng.normal(0, 1.5, vocab)
        boosted = rng.integers(0, vocab, 32)
        by_rank[boosted % 2000] += 6.0  # context-specific ids near the head
        rows[t, id_of_rank] = by_rank
    return rows


def bytes_per_token(logits: np.ndarray, mode: str, layout: int | None) -> dict[str, float]:
    """Compressed bytes per token of each stored array of ``mode`` in top-k ``layout``."""
    feature = StoredFeature("logits", logits_mode=mode, vocab_size=VOCAB, topk_layout=layout)
    arrays = prepare_example(FeatureSpec((feature,)), {"logits": logits}, len(logits))
    out = {}
    for name, array in arrays.items():
        stored, _ = encode(array, feature.array_dtype(name))
        out[name.split(".")[-1]] = len(Zstd(level=1).encode(stored.tobytes())) / len(logits)
    out["total"] = sum(out.values())
    return out


def main() -> None:
    """Print the table (markdown)."""
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else TOKENS
    logits = zipf_rows(tokens, VOCAB)
    print(f"V = {VOCAB:,}, {tokens} Zipf-shaped rows, fp16 values, ids at 18 bits, zstd-1\n")
    print("| mode | layout | values B | ids B | lse / counts B | total B/token | encode s/1k tok |")
    print("|---|---|---|---|---|---|---|")
    runs = [(f"topk:{k}", layout) for k in (16, 32, 64, 128) for layout in (1, 2)]
    for mode, layout in runs + [(f"sample:{n}", None) for n in (12, 32, 64)]:
        start = time.perf_counter()
        parts = bytes_per_token(logits, mode, layout)
        seconds = (time.perf_counter() - start) / tokens * 1000
        values = parts.get("topk_values", 0.0)
        ids = parts.get("topk_ids", parts.get("sample_ids", 0.0))
        extra = parts.get("logsumexp", parts.get("sample_counts", 0.0))
        print(
            f"| {mode} | {layout or '-'} | {values:.1f} | {ids:.1f} | {extra:.1f} | **{parts['total']:.1f}** "
            f"| {seconds:.2f} |"
        )
    print(f"\ndense fp16 for comparison: {VOCAB * 2:,} B/token before compression")


if __name__ == "__main__":
    main()
