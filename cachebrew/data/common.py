"""Shared helpers of the data preparation: seeded splits and JSON(L) writing."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

SPLITS = ("train", "dev", "test")


SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


T = TypeVar("T")


def stratified_split(
    items: Sequence[T],
    key: Callable[[T], Hashable],
    seed: int,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    min_held_out: int = 0,
) -> dict[str, list[T]]:
    """Split ``items`` into train/dev/test, at random within each ``key`` group.

    Each group (in sorted key order) is shuffled with one ``random.Random(seed)`` and cut into
    ``round(n * dev)`` dev and ``round(n * test)`` test items (at least ``min_held_out`` each
    when the group has more than ``2 * min_held_out`` items), the rest train. Items keep their
    input order inside each split. A pure function of (items, key, seed, fractions).
    """
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item), []).append(index)
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {name: [] for name in SPLITS}
    for group_key in sorted(groups, key=repr):
        indices = groups[group_key]
        rng.shuffle(indices)
        held = [round(len(indices) * f) for f in fractions[1:]]
        if len(indices) > 2 * min_held_out:
            held = [max(h, min_held_out) for h in held]
        chosen["dev"] += indices[: held[0]]
        chosen["test"] += indices[held[0] : held[0] + held[1]]
        chosen["train"] += indices[held[0] + held[1] :]
    return {name: [items[i] for i in sorted(chosen[name])] for name in SPLITS}


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One compact JSON object per line, UTF-8, keys in insertion order."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
