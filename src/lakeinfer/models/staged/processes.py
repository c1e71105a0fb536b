"""StageProcesses: a staged model's stages, each in a process of its own, chained by pipes.

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
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from ... import errors
from .manifest import Manifest
from .stage_process import POLL_S, stage_main

__all__ = ["StageDiedError", "StageProcesses"]

LOAD_TIMEOUT_S = 600.0


class StageDiedError(errors.WorkerLostError):
    """A stage process of a staged model ended while the model was in use."""


def _death(index: int, count: int, pid: int | None, exitcode: int | None) -> str:
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return f"stage {index + 1} of {count} (pid {pid}) died ({how})"


class StageProcesses:
    """The running stages of one staged model; ``run`` sends micro-batches through them."""

    def __init__(self, folder: str, manifest: Manifest, *, threads: Sequence[int],
                 devices: Sequence[str | None]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.count = len(manifest.stages)
        self._threads = list(threads)
        self._devices = list(devices)
        self._seq = itertools.count()
        self._lock = threading.Lock()       # the pending futures, the counters, the failure
        self._send_lock = threading.Lock()  # one sender at a time on the first stage's pipe
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._failure: errors.LakeinferError | None = None
        self._failed = threading.Event()
        self._closing = threading.Event()
        self.busy_s = [0.0] * self.count  # seconds each stage spent scoring
        self.micro_batches = 0
        self.processes: list[Any] = []
        self._inbox: Any = None    # the first stage's inbox, written here
        self._results: Any = None  # the last stage's outbox, read here
        self._controls: list[Any] = []
        self._threads_started: list[threading.Thread] = []

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every stage and wait until each has loaded its file (or one failed)."""
        context = multiprocessing.get_context("spawn")
        hops = [context.Pipe(duplex=False) for _ in range(self.count + 1)]  # (reader, writer) each
        self._inbox, self._results = hops[0][1], hops[self.count][0]
        try:
            for index, entry in enumerate(self.manifest.stages):
                control, report = context.Pipe(duplex=False)
                self._controls.append(control)
                process = context.Process(
                    target=stage_main, name=f"lakeinfer-stage-{index + 1}", daemon=True,
                    args=(index, self.count, self.folder, entry.to_dict(), self._threads[index],
                          self._devices[index], hops[index][0], hops[index + 1][1], report, os.getpid()))
                process.start()
                self.processes.append(process)
                # the stage holds its own ends now: with ours closed, a stage that dies breaks its pipes
                for end in (hops[index][0], hops[index + 1][1], report):
                    end.close()
            self._await_loads()
        except BaseException:
            self.close()
            raise
        for target, name in ((self._collect, "results"), (self._watch, "watch")):
            thread = threading.Thread(target=target, name=f"lakeinfer-stages-{name}", daemon=True)
            thread.start()
            self._threads_started.append(thread)

    def _await_loads(self) -> None:
        waiting = set(range(self.count))
        readers: dict[Any, int] = {c: i for i, c in enumerate(self._controls)}
        sentinels: dict[Any, int] = {p.sentinel: i for i, p in enumerate(self.processes)}
        while waiting:
            ready: list[Any] = multiprocessing.connection.wait([*readers, *sentinels], timeout=LOAD_TIMEOUT_S)
            if not ready:
                raise errors.ModelLoadError(f"staged model {self.folder}: stages {sorted(i + 1 for i in waiting)} "
                                            f"did not load within {LOAD_TIMEOUT_S:.0f} s")
            for reader in [r for r in ready if r in readers]:
                try:
                    message: Any = reader.recv()
                except (EOFError, OSError):  # it died: its sentinel says how
                    readers.pop(reader)
                    continue
                readers.pop(reader)
                if message[0] == "failed":
                    raise errors.from_wire(message[2])
                waiting.discard(message[1])
            for sentinel in [s for s in ready if s in sentinels]:
                index = sentinels.pop(sentinel)
                process = self.processes[index]
                process.join(timeout=1.0)
                if index in waiting and not any(readers.get(r) == index and r.poll() for r in readers):
                    raise errors.ModelLoadError(
                        f"{_death(index, self.count, process.pid, process.exitcode)} while loading its stage")

    def close(self) -> None:
        """Stop every stage process and wait for it; safe to call more than once."""
        self._closing.set()
        if self._inbox is not None and self._failure is None:
            # asked to stop behind the micro-batches already sent; a stuck pipe is ended by the kill below
            threading.Thread(target=self._send_stop, name="lakeinfer-stages-stop", daemon=True).start()
        for process in self.processes:
            process.join(timeout=2.0)
        for process in self.processes:
            if process.exitcode is None:
                process.kill()
                process.join()
        self._fail(errors.PredictionError(f"staged model {self.folder} was closed"))
        for thread in self._threads_started:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
        for connection in [self._inbox, self._results, *self._controls]:
            if connection is not None:
                connection.close()

    def _send_stop(self) -> None:
        with self._send_lock:
            try:
                self._inbox.send(None)
            except (OSError, ValueError):
                pass

    @property
    def failure(self) -> errors.LakeinferError | None:
        return self._failure

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    # -- scoring -------------------------------------------------------------------------------
    def run(self, chunks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every chunk's outputs, in order. Chunks go in as the first stage takes them, so a call
        with several chunks keeps several stages busy; a full pipeline holds the caller back."""
        futures = [self._submit(chunk) for chunk in chunks]
        return [f.result() for f in futures]

    def _submit(self, tensors: dict[str, Any]) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            if self._failure is not None:
                raise self._failure
            seq = next(self._seq)
            self._pending[seq] = future
        try:
            with self._send_lock:
                if self._closing.is_set():
                    raise errors.PredictionError(f"staged model {self.folder} was closed")
                self._inbox.send((seq, tensors, None, []))
        except (OSError, ValueError):  # the first stage is gone: the watcher says how
            self._failed.wait(timeout=5.0)
            raise self._failure or errors.PredictionError(f"staged model {self.folder}: stage 1 is gone") from None
        return future

    def _collect(self) -> None:
        while True:
            try:
                item = self._results.recv()
            except (EOFError, OSError):
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
            self._fail(StageDiedError(_death(index, self.count, process.pid, process.exitcode)))
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
        self._failed.set()
        for future in pending.values():
            if not future.done():
                future.set_exception(self._failure)
