"""Write a seeded random subset of a jsonl corpus (rows kept in file order).

    python subset.py ../data/sentiment/train.jsonl out/demo/data/train.jsonl --n 2000 --seed 0

``--n 0`` (or an n at least the corpus size) copies every row. The same input, n and seed
always give the same rows, so a pipeline's caches and results are reproducible.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def write_subset(source: Path, target: Path, num_rows: int, seed: int) -> int:
    """Write ``num_rows`` rows of ``source`` chosen with ``seed`` to ``target``; return the count."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if 0 < num_rows < len(lines):
        keep = sorted(random.Random(seed).sample(range(len(lines)), num_rows))
        lines = [lines[i] for i in keep]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--n", type=int, default=0, help="rows to keep (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    count = write_subset(args.source, args.target, args.n, args.seed)
    print(f"{args.target}: {count} rows (seed {args.seed})")


if __name__ == "__main__":
    main()
