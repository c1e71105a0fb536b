"""Overlap I/O with the model: read ahead and write behind on threads.

Arrow's readers, writers and the model runtimes release the GIL, so while the model scores one
batch the next one is decoded and the previous one compressed, on otherwise idle cycles. Where
there are none (a scorer on every core), :class:`WriteInline` and reading in line take their place.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END = object()


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items``, produced by a thread up to ``depth`` ahead; its errors re-raise here."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[Any, BaseException | None]) -> bool:
        # every put gives way to a consumer that has stopped: a blocked put would hang its join
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as exc:  # handed to the consumer
            offer((_END, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's finally (an open file) runs on this thread, now

    thread = threading.Thread(target=produce, name="lakeinfer-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], width: int) -> Iterator[R]:
    """``fn`` of each item, ``width`` calls at a time on threads of their own, yielded in the
    items' order (the next item is read while they run); an error re-raises at its item's turn,
    once the calls already started have ended, and no item after those is read."""
    pool = ThreadPoolExecutor(width, thread_name_prefix="lakeinfer-score")
    running: deque[Future[R]] = deque()
    try:
        for item in items:
            running.append(pool.submit(fn, item))
            if len(running) > width:
                yield running.popleft().result()
        while running:
            yield running.popleft().result()
    finally:
        for future in running:
            future.cancel()
        pool.shutdown(wait=True)


class WriteBehind:
    """Calls ``write(item)`` on a thread, at most ``depth`` items behind; ``close`` waits and re-raises."""

    def __init__(self, write: Callable[[Any], None], depth: int = 2) -> None:
        self._write = write
        self._slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="lakeinfer-write-behind", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            item = self._slots.get()
            if item is _END:
                return
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:
                    self._error = exc

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._slots.put(item)

    def close(self) -> None:
        self._slots.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error


class WriteInline:
    """:class:`WriteBehind`'s interface, writing on the caller's thread."""

    def __init__(self, write: Callable[[Any], None]) -> None:
        self._write = write

    def put(self, item: Any) -> None:
        self._write(item)

    def close(self) -> None:
        pass
