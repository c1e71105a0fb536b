"""StageProcesses: a staged model's stages, each in a process of its own, chained by bounded queues.

The processes are started with the "spawn" context (a fresh interpreter that loads only its own
stage, never a copy of the caller's memory), are children of the calling process, and stop with
it: ``close`` ends them, a finalizer closes a group nobody holds any more, and a stage whose
parent has gone exits by itself. A stage that dies fails every micro-batch in flight at once,
with an error that names it, rather than leaving its callers waiting.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from ... import errors
from .manifest import Manifest
from .stage_process import POLL_S, stage_main

__all__ = ["DEPTH", "StageDiedError", "StageProcesses"]

DEPTH = 2  # micro-batches each queue holds: enough to keep every stage busy, little to buffer
LOAD_TIMEOUT_S = 600.0


class StageDiedError(errors.PredictionError):
    """A stage process of a staged model ended while the model was in use."""

    status = "unavailable"


def _death(index: int, count: int, pid: int | None, exitcode: int | None) -> str:
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return f"stage {index + 1} of {count} (pid {pid}) died ({how})"


class StageProcesses:
    """The running stages of one staged model; ``run`` sends micro-batches through them."""

    def __init__(self, folder: str, manifest: Manifest, *, threads: Sequence[int],
                 devices: Sequence[str | None], depth: int = DEPTH) -> None:
        self.folder = folder
        self.manifest = manifest
        self.count = len(manifest.stages)
        self._threads = list(threads)
        self._devices = list(devices)
        self._depth = depth
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._failure: errors.LakeinferError | None = None
        self._closing = threading.Event()
        self.busy_s = [0.0] * self.count  # seconds each stage spent scoring
        self.micro_batches = 0
        self.processes: list[Any] = []
        self._queues: list[Any] = []
        self._threads_started: list[threading.Thread] = []

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every stage and wait until each has loaded its file (or one failed)."""
        context = multiprocessing.get_context("spawn")
        self._queues = [context.Queue(maxsize=self._depth) for _ in range(self.count + 1)]
        control = context.Queue()
        self._queues.append(control)
        for index, entry in enumerate(self.manifest.stages):
            process = context.Process(
                target=stage_main, name=f"lakeinfer-stage-{index + 1}", daemon=True,
                args=(index, self.count, self.folder, entry.to_dict(), self._threads[index], self._devices[index],
                      self._queues[index], self._queues[index + 1], control, os.getpid()))
            process.start()
            self.processes.append(process)
        try:
            self._await_loads(control)
        except BaseException:
            self.close()
            raise
        for target, name in ((self._collect, "results"), (self._watch, "watch")):
            thread = threading.Thread(target=target, name=f"lakeinfer-stages-{name}", daemon=True)
            thread.start()
            self._threads_started.append(thread)

    def _await_loads(self, control: Any) -> None:
        waiting = set(range(self.count))
        sentinels = {p.sentinel: i for i, p in enumerate(self.processes)}
        deadline = LOAD_TIMEOUT_S
        while waiting:
            ready = multiprocessing.connection.wait([control._reader, *sentinels], timeout=deadline)
            if not ready:
                raise errors.ModelLoadError(f"staged model {self.folder}: stages {sorted(i + 1 for i in waiting)} "
                                            f"did not load within {LOAD_TIMEOUT_S:.0f} s")
            while True:
                try:
                    message = control.get_nowait()
                except queue.Empty:
                    break
                if message[0] == "failed":
                    raise errors.from_wire(message[2])
                waiting.discard(message[1])
            for sentinel, index in sentinels.items():
                process = self.processes[index]
                if sentinel in ready and index in waiting and process.exitcode is not None:
                    raise errors.ModelLoadError(
                        f"{_death(index, self.count, process.pid, process.exitcode)} while loading its stage")

    def close(self) -> None:
        """Stop every stage process and wait for it; safe to call more than once."""
        self._closing.set()
        if self._queues:
            try:
                self._queues[0].put_nowait(None)
            except (queue.Full, ValueError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=2.0)
        for process in self.processes:
            if process.exitcode is None:
                process.kill()
                process.join()
        for q in self._queues:
            q.cancel_join_thread()
            q.close()
        self._fail(errors.PredictionError(f"staged model {self.folder} was closed"))
        for thread in self._threads_started:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)

    @property
    def failure(self) -> errors.LakeinferError | None:
        return self._failure

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    # -- scoring -------------------------------------------------------------------------------
    def run(self, chunks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every chunk's outputs, in order. Chunks go in as the first queue takes them, so a call
        with several chunks keeps several stages busy; a full queue holds the caller back."""
        futures = [self._submit(chunk) for chunk in chunks]
        return [f.result() for f in futures]

    def _submit(self, tensors: dict[str, Any]) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            if self._failure is not None:
                raise self._failure
            seq = next(self._seq)
            self._pending[seq] = future
        while True:
            try:
                self._queues[0].put((seq, tensors, None, []), timeout=POLL_S)
                return future
            except queue.Full:
                if self._failure is not None:
                    raise self._failure from None

    def _collect(self) -> None:
        results = self._queues[self.count]
        while not self._closing.is_set():
            try:
                item = results.get(timeout=POLL_S)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return
            if item is None:
                return
            seq, tensors, error, busy = item
            with self._lock:
                future = self._pending.pop(seq, None)
                for index, seconds in enumerate(busy):
                    self.busy_s[index] += seconds
                self.micro_batches += 1
            if future is None:
                continue
            if error is not None:
                future.set_exception(errors.from_wire(error))
            else:
                future.set_result(tensors)

    def _watch(self) -> None:
        sentinels = {p.sentinel: i for i, p in enumerate(self.processes)}
        while not self._closing.is_set():
            ready = multiprocessing.connection.wait(list(sentinels), timeout=POLL_S)
            if not ready or self._closing.is_set():
                continue
            index = sentinels[ready[0]]
            process = self.processes[index]
            process.join(timeout=1.0)
            died = StageDiedError(_death(index, self.count, process.pid, process.exitcode))
            self._fail(died)
            for other in self.processes:  # the rest of a broken pipeline is of no use: end it now
                if other.exitcode is None:
                    other.kill()
            for other in self.processes:
                other.join(timeout=5.0)
            return

    def _fail(self, error: errors.LakeinferError) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = error
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self._failure)
