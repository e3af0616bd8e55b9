"""Run the ``cachebrew`` CLI and SIGKILL it when the training loop asks for batch N+1.

Usage: ``python kill_after_batches.py N distill --config ... --out ...``. A crash simulated from
the test side: the library has no test hook; this script wraps ``CacheDataset.__iter__`` so
that, counted over every pass, the (N+1)-th batch request kills the process (no cleanup, no
``finally``), then calls :func:`cachebrew.cli.main` with the remaining arguments.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cli import main


def kill_after(limit: int) -> None:
    """Patch ``CacheDataset.__iter__`` to SIGKILL this process on batch ``limit + 1``."""
    original = CacheDataset.__iter__
    served = 0

    def killing_iter(self: CacheDataset) -> Iterator[Any]:
        nonlocal served
        for batch in original(self):
            served += 1
            yield batch
            if served >= limit:
                os.kill(os.getpid(), signal.SIGKILL)

    CacheDataset.__iter__ = killing_iter  # type: ignore[method-assign]


if __name__ == "__main__":
    kill_after(int(sys.argv[1]))
    sys.argv = ["cachebrew", *sys.argv[2:]]
    main()
