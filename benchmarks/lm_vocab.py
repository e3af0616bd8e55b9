"""Large-vocabulary logit storage: bytes/token, fidelity and one-thread encode/decode speed.

``make bench-lm`` (``python benchmarks/lm_vocab.py [TOKENS] [--rows-from CACHE] [--vocab V ...]``):
for V in {151,936, 262,144}, ``topk:K`` (lossless layout 2) and ``topk:K:q4|q5|q8`` (lossy value
codes, cache/logits/topk_codes.py) for K in {16, 32, 64, 128}, and ``sample:N`` for N in {12, 32, 64}.

Rows follow a trained LM's shape, not uniform random logits (whose ids would not compress like
real ones). Ids always come from a synthetic frequency-ordered vocabulary (BPE ids roughly
follow corpus frequency) shuffled locally (each id within ~5 % of its rank), with a context-
dependent set of 32 boosted ids per row; the values (the per-token profile of sorted log-probs)
come from one of two **sources**, printed with the table:

- ``synthetic`` (default): ``-1.1 * log(rank)`` plus Gaussian noise (sd 1.5).
- ``lm:<cache>`` (``--rows-from CACHE``, a dense ``--logits dense`` cache of a causal LM): each
  token's sorted log-probs from the cache, extended past the LM's vocabulary along a line in
  log(rank) fitted to its last decade of ranks and renormalised, then put rank for rank onto
  the synthetic row's order (its r-th largest entry gets the LM's r-th largest log-prob).

Each mode is stored exactly as the cache stores it (cachebrew.cache.write.prepare + codecs.encode,
zstd-1 over the whole block of rows) and read back as distill reads it (codecs.decode +
read_sparse_logits -> SparseLogits). **encode tok/s**: full (tokens, V) fp32 logits ->
compressed arrays (top-k selection or sampling included); **decode tok/s**: compressed arrays
-> SparseLogits; one thread (OMP and torch), **CPU time** of the process (``time.process_time``:
the box is shared, and CPU seconds of one thread do not stretch when other jobs take the cores
the way wall seconds do), best of ``--repeats``. **KL** (topk): KL(teacher || reconstructed)
in nats over the k stored ids plus the tail bucket, against the fp64 teacher (what the sparse
KD losses see; 0 for an exact copy): mean and p95 over tokens.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numcodecs import Zstd  # noqa: E402

from cachebrew.cache.format.codecs import decode, encode  # noqa: E402
from cachebrew.cache.format.spec import FeatureSpec, StoredFeature  # noqa: E402
from cachebrew.cache.logits.sparse import parse_logits_mode, read_sparse_logits  # noqa: E402
from cachebrew.cache.write.prepare import prepare_example  # noqa: E402

VOCABS = (151_936, 262_144)
TOKENS = 512
TOPK = (16, 32, 64, 128)
CODES = ("", ":q4", ":q5", ":q8")
SAMPLES = (12, 32, 64)


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


def lm_profiles(cache: Path, tokens: int) -> np.ndarray:
    """(tokens, V_lm) sorted (descending) log-probs of the first tokens of a dense LM cache."""
    from cachebrew.cache import open_cache

    reader = open_cache(cache)
    feature = reader.spec.get("logits")
    if feature is None or feature.topk or feature.logits_mode not in (None, "dense"):
        raise SystemExit(f"{cache}: --rows-from needs a cache with dense logits")
    rows: list[np.ndarray] = []
    for example in reader.iter_examples():
        rows.append(np.asarray(example["features"]["logits"], dtype=np.float64))
        if sum(len(r) for r in rows) >= tokens:
            break
    logits = np.concatenate(rows)[:tokens]
    if feature.reduction == "raw":
        logits = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return -np.sort(-logits, axis=1)


def extend_profile(profile: np.ndarray, vocab: int) -> np.ndarray:
    """(tokens, V_lm) sorted log-probs -> (tokens, vocab): past V_lm a line in log(rank) fitted
    to the last decade of ranks, the whole row renormalised (module docstring)."""
    tokens, width = profile.shape
    if width >= vocab:
        out = profile[:, :vocab]
    else:
        fit = np.arange(width // 10, width)
        x = np.log(fit + 1.0)
        slope, icpt = np.polyfit(x, profile[:, fit].T, 1)  # (tokens,) each
        extra = np.log(np.arange(width, vocab) + 1.0)
        tail = np.minimum(slope[:, None] * extra + icpt[:, None], profile[:, -1:])
        out = np.concatenate([profile, tail], axis=1)
    return out - np.logaddexp.reduce(out, axis=1, keepdims=True)


def rows_for(vocab: int, tokens: int, profiles: np.ndarray | None) -> np.ndarray:
    """Benchmark rows: synthetic, or the LM's profiles on the synthetic rows' id order."""
    rows = zipf_rows(tokens, vocab)
    if profiles is None:
        return rows
    values = extend_profile(profiles[np.arange(tokens) % len(profiles)], vocab)
    order = np.argsort(-rows, axis=1)
    np.put_along_axis(rows, order, values.astype(np.float32), axis=1)
    return rows


def _encode(feature: StoredFeature, logits: np.ndarray) -> dict[str, tuple[bytes, Any, str]]:
    arrays = prepare_example(FeatureSpec((feature,)), {"logits": logits}, len(logits))
    out = {}
    for name, array in arrays.items():
        dtype = feature.array_dtype(name)
        stored, _ = encode(array, dtype)
        out[name] = (Zstd(level=1).encode(np.ascontiguousarray(stored)), stored, dtype)
    return out


def _decode(blobs: dict[str, tuple[bytes, Any, str]], feature: StoredFeature) -> Any:
    arrays = {}
    for name, (blob, like, dtype) in blobs.items():
        raw = bytearray(Zstd().decode(blob))
        stored = np.frombuffer(raw, dtype=like.dtype).reshape(like.shape)
        arrays[name] = torch.from_numpy(decode(stored, None, dtype))
    mode = parse_logits_mode(str(feature.logits_mode))
    return read_sparse_logits(arrays, mode, int(feature.vocab_size or 0), str(feature.reduction))


def bucket_kl(logits: np.ndarray, lse: np.ndarray, ids: np.ndarray, logq: np.ndarray) -> Any:
    """KL(teacher || reconstructed) per token over the k ids + tail bucket (nats)."""
    logp = np.take_along_axis(logits, ids, axis=1).astype(np.float64) - lse
    logq = logq.astype(np.float64)

    def buckets(x: np.ndarray) -> np.ndarray:
        mass = np.minimum(np.logaddexp.reduce(x, axis=1, keepdims=True), -1e-300)
        return np.concatenate([x, np.log(-np.expm1(mass))], axis=1)

    p, q = buckets(logp), buckets(logq)
    return np.clip((np.exp(p) * (p - q)).sum(axis=1), 0, None)


def truncation_kl(logits: np.ndarray, lse: np.ndarray, k: int) -> Any:
    """Reference: KL(teacher || its exact top-k + the tail mass spread evenly) per token, the
    error of keeping only k ids, which no value code can remove."""
    out = []
    for start in range(0, len(logits), 64):
        logp = logits[start : start + 64].astype(np.float64) - lse[start : start + 64]
        rest = -np.partition(-logp, k - 1, axis=1)[:, k:]  # the V - k tail entries
        tail = np.logaddexp.reduce(rest, axis=1, keepdims=True)
        out.append((np.exp(rest) * (rest - tail + np.log(rest.shape[1]))).sum(axis=1))
    return np.concatenate(out)


def measure(logits: np.ndarray, lse: np.ndarray, mode: str, repeats: int) -> dict[str, float]:
    """Bytes/token per part, KL (topk) and best-of-repeats encode/decode tokens/s of one mode."""
    vocab, tokens = logits.shape[1], len(logits)
    feature = StoredFeature("logits", logits_mode=mode, vocab_size=vocab)
    encode_s, decode_s = [], []
    for _ in range(repeats):
        start = time.process_time()
        blobs = _encode(feature, logits)
        middle = time.process_time()
        teacher = _decode(blobs, feature)
        encode_s.append(middle - start)
        decode_s.append(time.process_time() - middle)
    out = {name.split(".")[-1]: len(blob) / tokens for name, (blob, _, _) in blobs.items()}
    out["total"] = sum(out.values())
    out["encode"], out["decode"] = tokens / min(encode_s), tokens / min(decode_s)
    if teacher.kind == "topk":
        kl = bucket_kl(logits, lse, teacher.ids.numpy(), teacher.logprobs.numpy())
        out["kl_mean"], out["kl_p95"] = float(kl.mean()), float(np.quantile(kl, 0.95))
    return out


def _kl_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def main() -> None:
    """Print the table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokens", nargs="?", type=int, default=TOKENS)
    parser.add_argument("--rows-from", type=Path, help="a dense LM cache: its sorted profiles")
    parser.add_argument("--vocab", type=int, nargs="+", default=list(VOCABS))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    profiles = lm_profiles(args.rows_from, args.tokens) if args.rows_from else None
    source = f"lm:{args.rows_from} ({profiles.shape[1]:,}-id LM)" if profiles is not None else (
        "synthetic"
    )  # fmt: skip
    print(f"source {source}; {args.tokens} tokens; fp16 values; zstd-1; one thread, CPU time; "
          f"load average {os.getloadavg()[0]:.2f} at start\n")  # fmt: skip
    print("| V | mode | values B | ids B | lse / counts B | total B/token | KL mean | KL p95 "
          "| encode tok/s | decode tok/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    references = []
    for vocab in args.vocab:
        logits = rows_for(vocab, args.tokens, profiles)
        peak = logits.max(axis=1, keepdims=True).astype(np.float64)
        lse = peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
        for k in TOPK:
            kl = truncation_kl(logits, lse, k)
            mass = -np.expm1(np.logaddexp.reduce(-np.partition(-logits, k - 1, axis=1)[:, :k]
                                                   - lse, axis=1))  # fmt: skip
            references.append(
                f"| {vocab:,} | {k} | {mass.mean():.3f} | {kl.mean():.3f} "
                f"| {np.quantile(kl, 0.95):.3f} |"
            )
        modes = [f"topk:{k}{c}" for k in TOPK for c in CODES] + [f"sample:{n}" for n in SAMPLES]
        for mode in modes:
            r = measure(logits, lse, mode, args.repeats)
            ids = r.get("topk_ids", r.get("sample_ids", 0.0))
            extra = r.get("logsumexp", r.get("sample_counts", 0.0))
            values = f"{r['topk_values']:.1f}" if "topk_values" in r else "-"
            print(
                f"| {vocab:,} | {mode} | {values} | {ids:.1f} | {extra:.1f} | **{r['total']:.1f}**"
                f" | {_kl_text(r.get('kl_mean'))} | {_kl_text(r.get('kl_p95'))} "
                f"| {r['encode']:,.0f} | {r['decode']:,.0f} |",
                flush=True,
            )
    print("\nReference, the truncation itself: tail mass (1 - top-k mass) and KL(teacher || exact "
          "top-k + tail spread evenly over the other ids), nats\n")  # fmt: skip
    print("| V | k | tail mass mean | KL mean | KL p95 |\n|---|---|---|---|---|")
    print("\n".join(references))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end; dense fp16 for comparison: "
          f"{max(args.vocab) * 2:,} B/token at V = {max(args.vocab):,} before compression")  # fmt: skip


if __name__ == "__main__":
    main()
