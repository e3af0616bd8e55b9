"""Write a cache from a thread while the teacher runs: the teacher never waits on the codec."""

from __future__ import annotations

import queue
import threading
from typing import Any

from cachebrew.cache import CacheWriter


class BackgroundWriter:
    """Feeds examples to a :class:`CacheWriter` from a thread (bounded queue, errors re-raised)."""

    def __init__(self, writer: CacheWriter, max_pending: int = 512):
        self._writer = writer
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cachebrew-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error

    def put(self, example: dict[str, Any]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(example)

    def progress_text(self) -> str:
        """The progress bar's postfix: megabytes on disk so far and the compression ratio."""
        written, raw = self._writer.bytes_written, self._writer.uncompressed_bytes_written
        ratio = f", ratio {raw / written:.2f}x" if written else ""
        return f"{written / 1e6:.1f} MB written{ratio}"

    def _run(self) -> None:
        while (example := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain so the producer never blocks on a dead writer
            try:
                features = dict(example["features"])
                ready = features.pop("_ready", None)  # precompute.READY: CUDA copies in flight
                if ready is not None:
                    ready.synchronize()
                self._writer.add(
                    example["example_id"],
                    {k: _to_numpy(v) for k, v in features.items()},
                    input_ids=example["input_ids"],
                    label=example["label"],
                )
            except BaseException as error:  # re-raised in the main thread
                self._error = error


def _to_numpy(value: Any) -> Any:
    """A tensor as numpy; a mapping of tensors (logits reduced by the teacher) item by item."""
    if isinstance(value, dict):
        return {key: item.numpy() for key, item in value.items()}
    return value.numpy()
