"""Batches made ahead in a background thread that runs on into the next epoch: :class:`Prefetcher`.

An epoch's first batch waits for the mixing buffer to fill (up to ``buffer_size`` examples
decoded), a stall a thread that starts with the epoch cannot hide: on a short epoch it was
most of the data wait (docs/benchmarks-history.md, "Fifth pass"). So the thread does not stop at the end of
an epoch: it goes on with the next one from its start, at most ``depth`` batches ahead, and
the next ``iter(dataset)`` after ``set_epoch(e + 1)`` takes those batches over. Any other epoch
or a resume position starts a new thread. The batches and their order are the ones the dataset
gives without prefetching: only the time they are made changes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# make_epoch(epoch, start) -> the batches of epoch from batch ``start``, or None when the
# dataset is gone (the thread then ends).
MakeEpoch = Callable[[int, int], "Iterator[Any] | None"]

_POLL_S = 0.1  # how often a blocked thread looks at its stop flag


class Prefetcher:
    """Serves the epochs of one dataset from threads running up to ``depth`` batches ahead.

    Args:
        make_epoch: ``(epoch, start) -> iterator of batches`` (None: stop). It runs in the
            thread; it should not keep the dataset alive (the dataset closes the prefetcher
            when it is collected).
        depth: batches made ahead of the consumer (>= 1).

    Each :meth:`epoch` iterator has a thread of its own (two iterators of one dataset do not
    disturb each other); a thread whose consumer finished its epoch runs ahead *idle* until
    the next :meth:`epoch` call takes it over (the next epoch from its start) or closes it.
    A pickled prefetcher (a DataLoader worker's copy of the dataset) arrives idle and unusable:
    workers do not prefetch.
    """

    def __init__(self, make_epoch: MakeEpoch | None, depth: int):
        self.depth = depth
        self._make = make_epoch
        self._idle: _Run | None = None  # a finished consumer's thread, running ahead

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` from batch ``start``; the thread then goes on with
        ``epoch + 1``. An error in the thread is raised here; closing this iterator before
        its end stops the thread."""
        run, self._idle = self._idle, None
        if run is None or run.next != (epoch, start):
            if run is not None:
                run.close()
            run = self._start(epoch, start)
        finished = False
        try:
            while True:
                kind, value = _get(run.slots, run.thread)
                if kind == "end":
                    finished, run.next = True, (epoch + 1, 0)
                    if self._idle is not None:  # another iterator finished first
                        self._idle.close()
                    self._idle = run
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            if not finished:
                run.close()

    def close(self) -> None:
        """Stop the idle thread and drop what it made (idempotent; threads of iterators still
        in use stop when those are closed)."""
        run, self._idle = self._idle, None
        if run is not None:
            run.close()

    def _start(self, epoch: int, start: int) -> _Run:
        if self._make is None:
            raise RuntimeError(
                "a pickled Prefetcher cannot run (DataLoader workers do not prefetch)"
            )
        slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self.depth + 1)
        stop = threading.Event()
        make = self._make

        def produce() -> None:
            current, position = epoch, start
            try:
                while not stop.is_set():
                    batches = make(current, position)
                    if batches is None:  # the dataset is gone
                        return
                    try:
                        for batch in batches:
                            if not _put(slots, ("item", batch), stop):
                                return
                    finally:
                        close = getattr(batches, "close", None)
                        if close is not None:
                            close()
                    if not _put(slots, ("end", current), stop):
                        return
                    current, position = current + 1, 0
            except BaseException as error:  # re-raised in the consumer
                _put(slots, ("error", error), stop)

        thread = threading.Thread(target=produce, name="cachebrew-prefetch", daemon=True)
        thread.start()
        return _Run(thread, slots, stop)

    def __getstate__(self) -> dict[str, Any]:
        return {"depth": self.depth}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(None, state["depth"])  # type: ignore[misc]


@dataclass
class _Run:
    """One producing thread, its queue and stop flag, and what it makes next once idle."""

    thread: threading.Thread
    slots: queue.Queue[tuple[str, Any]]
    stop: threading.Event
    next: tuple[int, int] | None = None

    def close(self) -> None:
        """Stop the thread and drop what it made."""
        self.stop.set()
        if self.thread is threading.current_thread():  # collected by the thread itself
            return
        while self.thread.is_alive():  # unblock a thread waiting for a free slot
            with contextlib.suppress(queue.Empty):
                self.slots.get_nowait()
            self.thread.join(_POLL_S)


def _put(slots: queue.Queue[tuple[str, Any]], item: tuple[str, Any], stop: threading.Event) -> bool:
    """Put ``item`` once a slot is free; False if ``stop`` was set first."""
    while not stop.is_set():
        try:
            slots.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(slots: queue.Queue[tuple[str, Any]], thread: threading.Thread) -> tuple[str, Any]:
    """The next item; an error if the thread ended without a word (it always leaves one)."""
    while True:
        try:
            return slots.get(timeout=_POLL_S)
        except queue.Empty:
            if not thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    return slots.get_nowait()
                return "error", RuntimeError("the cachebrew prefetch thread stopped unexpectedly")
