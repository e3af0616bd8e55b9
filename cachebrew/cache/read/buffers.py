"""Reusable flat buffers: a buffer is handed out again only when nothing else refers to it.

Fresh memory costs page faults on first write: decoding a hidden-state cache's chunks into new
blocks took ~1.5x as long as decoding them into a reused buffer, and a new float32 batch per
array per batch spent ~25 % of a reader epoch zeroing pages (docs/benchmarks-history.md, "Reader against
its codec"). Every numpy view of a pooled buffer, and every tensor made from such a view with
``torch.from_numpy``, holds a reference to the flat buffer, so its reference count tells
whether a batch the caller keeps, a prefetch queue or a cached chunk still uses it.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np


class BufferPool:
    """Up to ``per_key`` reusable flat buffers per key, and at most ``max_bytes`` kept in all.

    Args:
        per_key: buffers kept per key; when all are in use, fresh memory is returned (and
            not kept), so a caller that holds many batches costs memory only while it does.
        max_bytes: bytes kept over all keys (None: no limit beyond ``per_key``).

    ``take`` may be called from several threads (decode threads take chunk buffers). A pickled
    pool (a DataLoader worker's copy of a dataset) arrives empty.
    """

    def __init__(self, per_key: int = 4, max_bytes: int | None = None):
        self.per_key = per_key
        self.max_bytes = max_bytes
        self.allocations = 0  # new buffers made (tests and benchmarks read it)
        self._pools: dict[Any, list[np.ndarray]] = {}
        self._kept_bytes = 0
        self._lock = threading.Lock()

    def take(self, key: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` with undefined contents that no
        live array or tensor refers to."""
        size = math.prod(shape)
        with self._lock:
            pool = self._pools.setdefault((key, np.dtype(dtype)), [])
            for i in range(len(pool)):
                if sys.getrefcount(pool[i]) == 2:  # only the pool's list and this argument
                    if pool[i].size < size:
                        self._kept_bytes -= pool[i].nbytes
                        pool[i] = self._new(size, dtype)
                        self._kept_bytes += pool[i].nbytes
                    return pool[i][:size].reshape(shape)
            flat = self._new(size, dtype)
            fits = self.max_bytes is None or self._kept_bytes + flat.nbytes <= self.max_bytes
            if len(pool) < self.per_key and fits:
                pool.append(flat)
                self._kept_bytes += flat.nbytes
            return flat.reshape(shape)

    def _new(self, size: int, dtype: Any) -> np.ndarray:
        self.allocations += 1
        return np.empty(size, dtype=dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {"per_key": self.per_key, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["per_key"], state["max_bytes"])  # type: ignore[misc]
