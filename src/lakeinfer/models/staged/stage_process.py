"""The stage process protocol: the loop each stage process runs.

A stage process loads only its own stage file, then takes micro-batches from its inbox (a pipe
from the stage before it, or from the command) and sends what it makes down its outbox (a pipe to
the next stage, the last one's to the command). A reader thread keeps at most ``DEPTH``
micro-batches waiting; when they are there it stops reading, the pipe fills and the sender
blocks. So a slow stage holds back the ones before it instead of letting batches pile up, and
stage K works on batch k+1 while stage K+1 works on batch k.

Pipes, not ``multiprocessing.Queue``: no named semaphores, so no resource tracker process and
nothing to clean up when the command ends without its teardown.

Messages: ``(seq, tensors, error, busy)``, where ``error`` is a wire error (``errors.to_wire``)
that the following stages pass on untouched and ``busy`` the seconds each stage so far spent on
it; ``None`` asks the stage to stop and is passed on. The control pipe carries
``("ready", index, pid)`` or ``("failed", index, wire)`` once.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

from ... import errors
from .manifest import StageEntry
from .runners import load_runner

__all__ = ["DEPTH", "POLL_S", "stage_main"]

DEPTH = 2  # micro-batches waiting in each stage: enough to keep it busy, little to buffer
POLL_S = 0.25  # how often an idle stage looks whether the command that started it is still there
_GONE = object()  # the inbox closed: whoever sent to this stage has gone


def _read(inbox: Any, waiting: queue.Queue[Any]) -> None:
    while True:
        try:
            item = inbox.recv()
        except (EOFError, OSError):
            waiting.put(_GONE)
            return
        waiting.put(item)
        if item is None:
            return


def stage_main(index: int, count: int, folder: str, entry: dict[str, Any], threads: int, device: str | None,
               inbox: Any, outbox: Any, control: Any, parent: int) -> None:
    """Run stage ``index`` (0-based) of ``count`` until told to stop or its senders are gone."""
    name = f"stage {index + 1} of {count}"
    try:
        runner = load_runner(folder, StageEntry.from_dict(entry), threads=threads, device=device)
    except Exception as exc:
        wrapped = exc if isinstance(exc, errors.LakeinferError) else errors.ModelLoadError(
            f"{type(exc).__name__}: {exc}")
        control.send(("failed", index, {**errors.to_wire(wrapped), "message": f"{name}: {wrapped}"}))
        return
    control.send(("ready", index, os.getpid()))
    waiting: queue.Queue[Any] = queue.Queue(maxsize=DEPTH)
    threading.Thread(target=_read, args=(inbox, waiting), name="stage-inbox", daemon=True).start()
    while True:
        try:
            item = waiting.get(timeout=POLL_S)
        except queue.Empty:
            if os.getppid() != parent:  # the command is gone (killed): so is its pipeline
                return
            continue
        if item is _GONE:
            return
        if item is None:
            _send(outbox, None)
            return
        seq, tensors, error, busy = item
        start = time.perf_counter()
        if error is None:
            try:
                tensors = runner(tensors)
            except Exception as exc:
                failed = errors.PredictionError(f"{name} failed: {type(exc).__name__}: {exc}")
                tensors, error = None, errors.to_wire(exc if isinstance(exc, errors.LakeinferError) else failed)
        if not _send(outbox, (seq, tensors, error, [*busy, time.perf_counter() - start])):
            return


def _send(outbox: Any, item: Any) -> bool:
    """Send ``item`` on; False when the receiver has gone."""
    try:
        outbox.send(item)
        return True
    except (BrokenPipeError, EOFError, OSError):
        return False
