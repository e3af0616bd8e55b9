"""The value codes tried for ``topk:K:qB`` (cache/logits/topk_codes.py): bytes/token and fidelity.

``python benchmarks/topk_code_variants.py [TOKENS] [--k 128] [--vocab 151936] [--rows-from C]``:
the top-k log-probabilities of benchmarks/lm_vocab.py's rows, in id order (layout 2), coded by
each variant, zstd-1 over the block (values + any per-row header; ids and logsumexp are the same
for all: see ``make bench-lm``). KL(teacher || reconstructed) over the k ids + the tail bucket.
Every variant but "no mass kept" rebuilds ``log q = r - logsumexp(r) - d`` from its relative
levels ``r`` and the stored top-k mass ``d`` (fp16, 2 B/row counted), so the tail bucket stays
the teacher's; "no mass kept" anchors the levels at an fp16 top-1 instead, and the column
"bad tail" counts rows whose rebuilt top-k mass exceeds 1 (a negative tail).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from lm_vocab import lm_profiles, rows_for
from numcodecs import Zstd

from cachebrew.cache.logits.sparse import to_byte_planes
from cachebrew.cache.logits.topk_codes import decode_coded, encode_values

Coder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # logp -> (stored bytes, log q)


def _keep_mass(rel: np.ndarray, logp: np.ndarray) -> np.ndarray:
    mass = np.logaddexp.reduce(logp, axis=1, keepdims=True).astype(np.float16).astype(float)
    return rel - np.logaddexp.reduce(rel, axis=1, keepdims=True) + mass


def _header(logp: np.ndarray, depth: np.ndarray | None = None) -> np.ndarray:
    """The per-row bytes a variant stores besides its codes: fp16 mass (+ a depth byte)."""
    mass = np.logaddexp.reduce(logp, axis=1, keepdims=True).astype("<f2").view(np.uint8)
    if depth is None:
        return mass
    return np.concatenate([np.clip(depth * 8, 0, 255).astype(np.uint8), mass], axis=1)


def fixed_log_step(step: float) -> Coder:
    """uint8 ``round((max - log q) / step)``, one step for all rows (clips 255 steps deep)."""

    def code(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.clip(np.rint((logp.max(1, keepdims=True) - logp) / step), 0, 255).astype(np.uint8)
        return np.concatenate([_header(logp), c], 1), _keep_mass(-c.astype(float) * step, logp)

    return code


def per_row_power(gamma: float, levels: int) -> Coder:
    """Levels uniform in ``(q / q_max) ** gamma`` over the row's depth (gamma 0: in log q)."""

    def code(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = logp - logp.max(1, keepdims=True)
        depth = np.ceil(-rel.min(1, keepdims=True) * 8) / 8
        if gamma == 0:
            c = np.rint((rel + depth) / np.maximum(depth, 1e-9) * (levels - 1))
            r = -depth + c / (levels - 1) * depth
        else:
            floor = np.exp(-gamma * depth)
            c = np.rint((np.exp(gamma * rel) - floor) / (1 - floor + 1e-300) * (levels - 1))
            r = np.log(floor + c / (levels - 1) * (1 - floor)) / gamma
        stored = np.concatenate([_header(logp, depth), c.astype(np.uint8)], 1)
        return stored, _keep_mass(r, logp)

    return code


def fixed_power_step(gamma: float, step: float) -> Coder:
    """uint8 ``round((q / q_max) ** gamma / step)``, one step for all rows (0 -> half a step)."""

    def code(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.clip(np.rint(np.exp(gamma * (logp - logp.max(1, keepdims=True))) / step), 0, 255)
        stored = np.concatenate([_header(logp), c.astype(np.uint8)], 1)
        return stored, _keep_mass(np.log(np.maximum(c, 0.5) * step) / gamma, logp)

    return code


def shipped(code_name: str, exact: int = 0) -> Coder:
    """cache/logits/topk_codes.py's code; ``exact`` > 0 also stores the top entries as fp16 + index."""

    def code(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stored = encode_values(logp, code_name)
        logq = decode_coded(stored, code_name)
        if exact:
            top = np.argsort(-logp, axis=1)[:, :exact]
            exact_values = np.take_along_axis(logp, top, 1).astype(np.float16)
            np.put_along_axis(logq, top, exact_values.astype(float), 1)
            rest = np.ones_like(logq, bool)
            np.put_along_axis(rest, top, False, 1)  # rescale the rest to keep the mass
            mass = np.logaddexp.reduce(logp, 1, keepdims=True)
            rest_mass = np.log(-np.expm1(np.logaddexp.reduce(exact_values.astype(float), 1,
                                                             keepdims=True) - mass)) + mass  # fmt: skip
            others = np.where(rest, logq, -np.inf)
            logq = np.where(rest, logq - np.logaddexp.reduce(others, 1, keepdims=True)
                            + rest_mass, logq)  # fmt: skip
            extra = np.concatenate([exact_values.view(np.uint8), top.astype(np.uint8)], 1)
            stored = np.concatenate([stored, extra], 1)
        return stored, logq

    return code


def no_mass_kept(code_name: str) -> Coder:
    """The shipped levels anchored at an fp16 top-1 log-prob instead of the stored mass."""

    def code(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stored = encode_values(logp, code_name)
        logq = decode_coded(stored, code_name)
        top = logp.max(1, keepdims=True).astype(np.float16).astype(float)
        return stored, logq - logq.max(1, keepdims=True) + top

    return code


VARIANTS: dict[str, Coder] = {
    "log q, fixed step 1/16 nat (uint8)": fixed_log_step(1 / 16),
    "log q, fixed step 1/4 nat": fixed_log_step(1 / 4),
    "log q, fixed step 1/2 nat": fixed_log_step(1 / 2),
    "log q, per-row range, 16 levels": per_row_power(0.0, 16),
    "log q, per-row range, 32 levels": per_row_power(0.0, 32),
    "sqrt(q/q_max), per-row range, 16 levels": per_row_power(0.5, 16),
    "sqrt(q/q_max), per-row range, 32 levels": per_row_power(0.5, 32),
    "(q/q_max)^(1/4), fixed step 1/24": fixed_power_step(0.25, 1 / 24),
    "(q/q_max)^(1/4), fixed step 1/32": fixed_power_step(0.25, 1 / 32),
    "**q4**: (q/q_max)^(1/4), per-row range, 16 levels": shipped("q4"),
    "q4 + top-4 exact (fp16 + index)": shipped("q4", exact=4),
    "**q5**: (q/q_max)^(1/4), per-row range, 32 levels": shipped("q5"),
    "**q8**: (q/q_max)^(1/4), per-row range, 256 levels": shipped("q8"),
    "q4 levels, no mass kept (fp16 top-1 anchor)": no_mass_kept("q4"),
}


def bucket_kl(logp: np.ndarray, logq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KL over the k ids + tail bucket per row, and which rows rebuilt a mass above 1."""
    mass_p, mass_q = (np.logaddexp.reduce(x, axis=1, keepdims=True) for x in (logp, logq))
    bad = mass_q[:, 0] >= 0
    tail_q = np.log(np.clip(-np.expm1(mass_q), 1e-30, None))
    p = np.concatenate([logp, np.log(-np.expm1(mass_p))], 1)
    q = np.concatenate([logq, tail_q], 1)
    return np.clip((np.exp(p) * (p - q)).sum(1), 0, None), bad


def main() -> None:
    """Print the table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokens", nargs="?", type=int, default=256)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--rows-from", type=Path)
    args = parser.parse_args()
    profiles = lm_profiles(args.rows_from, args.tokens) if args.rows_from else None
    logits = rows_for(args.vocab, args.tokens, profiles).astype(np.float64)
    logp_all = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    ids = np.sort(np.argpartition(-logp_all, args.k - 1, axis=1)[:, : args.k], axis=1)
    logp = np.take_along_axis(logp_all, ids, axis=1)  # (tokens, k), id order
    source = f"lm:{args.rows_from}" if args.rows_from else "synthetic"
    print(f"source {source}; V = {args.vocab:,}, k = {args.k}, {args.tokens} tokens, zstd-1\n")
    print("| value code | values B/token | KL mean | KL p95 | bad tail |\n|---|---|---|---|---|")
    size = len(Zstd(level=1).encode(to_byte_planes(logp.astype(np.float16)))) / args.tokens
    kl, _ = bucket_kl(logp, logp.astype(np.float16).astype(float))
    print(f"| fp16 byte planes (lossless default) | {size:.1f} | {kl.mean():.1e} "
          f"| {np.quantile(kl, 0.95):.1e} | 0 |")  # fmt: skip
    for name, coder in VARIANTS.items():
        stored, logq = coder(logp)
        size = len(Zstd(level=1).encode(np.ascontiguousarray(stored))) / args.tokens
        kl, bad = bucket_kl(logp, logq)
        print(f"| {name} | {size:.1f} | {kl.mean():.1e} | {np.quantile(kl, 0.95):.1e} "
              f"| {int(bad.sum())} |")  # fmt: skip


if __name__ == "__main__":
    main()
