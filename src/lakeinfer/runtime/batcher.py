"""Adaptive batching: concurrent requests merged into one model call, each caller getting
exactly its own rows back.

An idle batcher does not wait: a lone request runs at once. Under load, requests that arrive
while the model is busy are merged into the next call, up to ``max_batch_size`` rows; when the
last call merged several requests, the batcher may wait up to ``max_wait_ms`` for more.
The queue is bounded: past ``max_queue`` waiting requests, ``submit`` raises :class:`Overloaded`.
A caller may first wait in line for room in the queue (``room``): the server's HTTP callers do,
so that callers who retry a refusal at once are not refused again and again at full speed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from ..errors import LakeinferError

__all__ = ["AdaptiveBatcher", "Overloaded", "score_group"]

log = logging.getLogger("lakeinfer.batcher")

# Model calls shorter than this (on average) may run on the event loop itself.
INLINE_SECONDS = 0.0005


class Overloaded(LakeinferError):
    """The queue is full; the caller should retry later."""

    status = "unavailable"


@dataclass
class _Request:
    batch: pa.RecordBatch
    future: asyncio.Future[pa.RecordBatch]


class AdaptiveBatcher:
    """Runs ``predict(batch) -> batch`` (row-preserving) over merged requests on one thread."""

    def __init__(self, predict: Callable[[pa.RecordBatch], pa.RecordBatch], *, max_batch_size: int = 256,
                 max_wait_ms: float = 2.0, max_queue: int = 1024, executor: Executor | None = None,
                 on_batch: Callable[[int, int], None] | None = None, holds_gil: bool = False,
                 inline_under: float | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="lakeinfer-model")
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._on_batch = on_batch
        # a model that holds the GIL as it scores gains nothing on a thread even under load: the
        # event loop waits for the GIL either way, and the hand-offs are extra
        self._holds_gil = holds_gil
        # calls shorter than this (on average) run on the loop even under load: a process of one core,
        # where a model thread overlaps nothing and only adds hand-offs
        self._inline_under = inline_under
        self._busy_before = False
        self._closing = False
        self._running = 0
        self._call_seconds = float("inf")  # moving average of a model call; unknown until the first
        self._line: deque[asyncio.Future[bool]] = deque()  # callers waiting for room, first come first
        self._waiting = 0

    @property
    def depth(self) -> int:
        """Requests waiting for the model."""
        return self._queue.qsize()

    @property
    def waiting(self) -> int:
        """Callers waiting in line for room in the queue."""
        return self._waiting

    async def room(self, wait: float) -> bool:
        """Whether there is room in the queue for one more request, waiting in line up to ``wait``
        seconds for it; callers already in line go first. False: still none (refuse the request)."""
        if self._queue.qsize() < self.max_queue and not self._waiting:
            return True
        if self._closing or wait <= 0:
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._line.append(future)
        self._waiting += 1
        # one timer handle, not a timeout scope: under overload every request waits here
        expiry = loop.call_later(wait, _give_up, future)
        try:
            return await future
        finally:
            expiry.cancel()
            self._waiting -= 1  # a caller that gave up stays in the deque, done: _let_in skips it

    def _let_in(self) -> None:
        """Wake the callers in line that the queue has room for now."""
        free = self.max_queue - self._queue.qsize()
        while free > 0 and self._line:
            future = self._line.popleft()
            if not future.done():
                future.set_result(True)
                free -= 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="lakeinfer-batcher")

    async def submit(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The model's output rows for ``batch``'s rows."""
        if self._closing:
            raise Overloaded("the server is shutting down")
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests are waiting (max_queue={self.max_queue})")
        future: asyncio.Future[pa.RecordBatch] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(batch, future))
        return await future

    async def _loop(self) -> None:
        carry: _Request | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            self._running += 1  # from here until its results are handed out
            group, rows = [first], first.batch.num_rows
            deadline = time.monotonic() + self.max_wait if self._busy_before else None
            while rows < self.max_batch_size:
                nxt = await self._next(deadline)
                if nxt is None:
                    break
                if rows + nxt.batch.num_rows > self.max_batch_size:
                    carry = nxt  # a request's own rows count: it leads the next call instead
                    break
                group.append(nxt)
                rows += nxt.batch.num_rows
            self._busy_before = len(group) > 1
            if self._line:
                self._let_in()
            try:
                await self._run(group)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the loop outlives any failure: its callers get the error
                log.exception("lakeinfer: a batch failed outside the model call")
                for request in group:
                    if not request.future.done():
                        request.future.set_exception(exc)
            finally:
                self._running -= 1

    async def _next(self, deadline: float | None) -> _Request | None:
        """A queued request now, or by ``deadline`` (None: only one already queued)."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - time.monotonic() if deadline is not None else 0.0
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
            return None

    async def _run(self, group: list[_Request]) -> None:
        live = [r for r in group if not r.future.done()]  # callers that timed out are skipped
        if not live:
            return
        batches = [r.batch for r in live]
        fast = self._call_seconds < INLINE_SECONDS and (self._holds_gil or self._queue.empty())
        if fast or (self._inline_under is not None and self._call_seconds < self._inline_under):
            # A fast model with nobody waiting, or one that holds the GIL: two thread hand-offs
            # cost more than the call. One that releases the GIL scores on the thread under load,
            # while the loop reads the next requests; a slow one would stall the loop.
            results, elapsed = _timed(self._predict, batches)
        else:
            loop = asyncio.get_running_loop()
            results, elapsed = await loop.run_in_executor(self._executor, _timed, self._predict, batches)
        # the call's own time, measured where it ran: with the hand-off counted, a fast model
        # would look slow after each call on the thread and flip between the two ways
        self._call_seconds = elapsed if self._call_seconds == float("inf") else 0.8 * self._call_seconds + 0.2 * elapsed
        for request, result in zip(live, results, strict=True):
            if request.future.done():
                continue
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(len(live), sum(r.batch.num_rows for r in live))

    async def drain(self) -> None:
        """Refuse new requests and finish every one already queued."""
        self._closing = True
        for future in self._line:  # let them in to be refused by submit, now rather than later
            if not future.done():
                future.set_result(True)
        while self._queue.qsize() or self._running:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)


def _give_up(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


def score_group(predict: Callable[[pa.RecordBatch], pa.RecordBatch],
                   batches: list[pa.RecordBatch]) -> list[pa.RecordBatch | BaseException]:
    """One model call for requests of one schema; a bad request fails alone, with its own reason."""
    if len(batches) == 1:
        return [_call(predict, batches[0])]
    if any(b.schema != batches[0].schema for b in batches[1:]):
        return [_call(predict, b) for b in batches]
    merged = pa.Table.from_batches(batches).combine_chunks().to_batches()
    merged_batch = merged[0] if merged else batches[0]
    try:
        out = predict(merged_batch)
    except LakeinferError:
        # one request's bad input must not fail its neighbours: score them one by one
        return [_call(predict, b) for b in batches]
    except BaseException as exc:
        return [exc] * len(batches)
    if out.num_rows != merged_batch.num_rows:
        return [_call(predict, b) for b in batches]
    results: list[pa.RecordBatch | BaseException] = []
    offset = 0
    for b in batches:
        results.append(out.slice(offset, b.num_rows))
        offset += b.num_rows
    return results


def _timed(predict: Callable[[pa.RecordBatch], pa.RecordBatch],
           batches: list[pa.RecordBatch]) -> tuple[list[pa.RecordBatch | BaseException], float]:
    start = time.perf_counter()
    results = score_group(predict, batches)
    return results, time.perf_counter() - start


def _call(predict: Callable[[pa.RecordBatch], pa.RecordBatch], batch: pa.RecordBatch) -> pa.RecordBatch | BaseException:
    try:
        return predict(batch)
    except BaseException as exc:
        return exc
