"""The stage process protocol: the loop each stage process runs.

A stage process loads only its own stage file, then takes micro-batches from its inbox and puts
what it makes in its outbox, which is the next stage's inbox (the last stage's: the results). Each
queue holds a few micro-batches at most, so a slow stage holds back the ones before it instead of
letting batches pile up, and stage K works on batch k+1 while stage K+1 works on batch k.

Messages on the data queues: ``(seq, tensors, error, busy)``, where ``error`` is a wire error
(``errors.to_wire``) that the following stages pass on untouched and ``busy`` the seconds each
stage so far spent on it; ``None`` asks the stage to stop and is passed on. The control queue
carries ``("ready", index, pid)`` or ``("failed", index, wire)`` once per stage.
"""

from __future__ import annotations

import os
import queue
import time
from typing import Any

from ... import errors
from .manifest import StageEntry
from .runners import load_runner

__all__ = ["POLL_S", "stage_main"]

POLL_S = 0.25  # how often an idle stage looks whether the command that started it is still there


def stage_main(index: int, count: int, folder: str, entry: dict[str, Any], threads: int, device: str | None,
               inbox: Any, outbox: Any, control: Any, parent: int) -> None:
    """Run stage ``index`` (0-based) of ``count`` until told to stop or the parent is gone."""
    name = f"stage {index + 1} of {count}"
    try:
        runner = load_runner(folder, StageEntry.from_dict(entry), threads=threads, device=device)
    except Exception as exc:
        wrapped = exc if isinstance(exc, errors.LakeinferError) else errors.ModelLoadError(
            f"{type(exc).__name__}: {exc}")
        control.put(("failed", index, {**errors.to_wire(wrapped), "message": f"{name}: {wrapped}"}))
        return
    control.put(("ready", index, os.getpid()))
    while True:
        try:
            item = inbox.get(timeout=POLL_S)
        except queue.Empty:
            if os.getppid() != parent:  # the command is gone (killed): so is its pipeline
                for q in (inbox, outbox, control):
                    q.cancel_join_thread()  # exit without waiting for readers that are gone
                return
            continue
        if item is None:  # passed on before exiting: the process flushes its outbox as it exits
            outbox.put(None)
            return
        seq, tensors, error, busy = item
        start = time.perf_counter()
        if error is None:
            try:
                tensors = runner(tensors)
            except Exception as exc:
                failed = errors.PredictionError(f"{name} failed: {type(exc).__name__}: {exc}")
                tensors, error = None, errors.to_wire(exc if isinstance(exc, errors.LakeinferError) else failed)
        outbox.put((seq, tensors, error, [*busy, time.perf_counter() - start]))
