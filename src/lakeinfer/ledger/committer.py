"""The committer: the one process-wide thread that ships the WAL to the ledger table.

Every ``interval`` seconds (and once more when closed) it reads the frames each segment gained
since the table's recorded offset, appends them in one commit whose properties record the new
offsets, and deletes the segments that are final (no writer holds them) and wholly shipped. A
restart reads the offsets back from the table: a row is shipped once however the process died.
Its health goes to ``status.json`` in the WAL folder, where every worker reads it (readiness and
``/metrics``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from typing import Any, Protocol

import pyarrow as pa

from ..errors import ConfigError
from .rows import table_rows
from .table import LedgerTable
from .wal import is_final, read_segment, segments

__all__ = ["STATUS_FILE", "Committer", "read_status"]

log = logging.getLogger("lakeinfer.ledger")
STATUS_FILE = "status.json"
LOCK_FILE = "committer.lock"



class Select(Protocol):
    """Which rows of each frame to ship (the stream's: only those whose outputs Kafka has committed)."""

    def begin(self, state: dict[str, Any]) -> None:
        """A pass starts from the table's ``state``."""

    def take(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        """The frame's rows to ship (maybe none); None: not yet decided, hold it and what follows."""

    def end(self) -> dict[str, Any]:
        """What the pass adds to the state the commit records."""


def read_status(folder: str) -> dict[str, Any]:
    """The committer's last status (``{}`` before its first)."""
    try:
        with open(os.path.join(folder, STATUS_FILE)) as fh:
            status: dict[str, Any] = json.load(fh)
            return status
    except (OSError, ValueError):
        return {}


def _unify(batches: list[pa.RecordBatch]) -> pa.Table:
    """The batches as one table: each column in the type of its first appearance."""
    schema = pa.unify_schemas([b.schema for b in batches], promote_options="permissive")
    first: dict[str, pa.Field] = {}
    for batch in batches:
        for f in batch.schema:
            first.setdefault(f.name, f)
    schema = pa.schema([first[name] for name in schema.names])
    return pa.Table.from_batches([_conform(b, schema) for b in batches], schema=schema)


def _runs(frames: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """Each run of consecutive frames of one schema (metadata included) as one batch."""
    runs: list[list[pa.RecordBatch]] = []
    for frame in frames:
        if runs and frame.schema.equals(runs[-1][0].schema, check_metadata=True):
            runs[-1].append(frame)
        else:
            runs.append([frame])
    return [run[0] if len(run) == 1 else pa.concat_batches(run) for run in runs]


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for f in schema:
        index = batch.schema.get_field_index(f.name)
        column = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, f.type)
        columns.append(column if column.type == f.type else column.cast(f.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class Committer:
    """Ships ``folder``'s WAL to ``table``; one per WAL folder (a lock file makes sure)."""

    def __init__(self, table: LedgerTable, folder: str, *, interval: float, select: Select | None = None) -> None:
        self.table = table
        self.folder = folder
        self.interval = interval
        self.select = select
        os.makedirs(folder, exist_ok=True)
        self._lock = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise ConfigError(f"another process ships the ledger WAL in {folder} (give this one its own "
                              "--ledger-wal)") from None
        self._state: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.committed = 0
        self.pending = 0
        self.commits = 0
        self.last_commit: float | None = None
        self.failing_since: float | None = None
        self.error: str | None = None

    def start(self) -> Committer:
        self._write_status()
        self._thread = threading.Thread(target=self._run, name="lakeinfer-ledger", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.ship()
            if self._stop.wait(self.interval):
                return

    def close(self) -> None:
        """Stop, shipping what the WAL holds now (the server has drained); release the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.ship()
        os.close(self._lock)

    def ship(self) -> bool:
        """One pass: ship what is new, drop what is done; False when the table could not be written."""
        try:
            if self._state is None:  # at start, and after a failure whose outcome is unknown
                self._state = self.table.state()
                self.committed = int(self._state.get("rows", 0))
            self._pass(self._state)
        except Exception as exc:
            self._state = None
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.failing_since is None:
                self.failing_since = time.time()
                log.error("lakeinfer: ledger %s: cannot commit: %s", self.table.uri, self.error)
            self._write_status()
            return False
        self.failing_since, self.error = None, None
        self._write_status()
        return True

    def _pass(self, state: dict[str, Any]) -> None:
        present = segments(self.folder)
        # a segment missing from disk was shipped to its end and deleted
        offsets: dict[str, int] = {k: v for k, v in state.get("wal", {}).items() if k in present}
        batches: list[pa.RecordBatch] = []
        finished = []
        if self.select is not None:
            self.select.begin(state)
        for name in present:
            path = os.path.join(self.folder, name)
            final = is_final(path)  # before reading: a final segment read now is read to its end
            start = offsets.get(name, 0)
            read = read_segment(path, start)
            end = start
            if self.select is None:  # every frame; frames alike become table rows together, not one by one
                batches += [table_rows(run) for run in _runs(read.batches)]
                end = read.end
            else:
                for frame, frame_end in zip(read.batches, read.ends, strict=True):
                    taken = self.select.take(table_rows(frame))
                    if taken is None:
                        break
                    batches.append(taken)
                    end = frame_end
            if end != start:
                offsets[name] = end
            elif final and read.end == start:
                finished.append(name)
        # a segment shipped to its end and final: gone from disk first, then from the state
        for name in finished:
            os.remove(os.path.join(self.folder, name))
            offsets.pop(name, None)
        for name in os.listdir(self.folder):  # a writer killed before naming its new segment
            if name.endswith(".tmp") and is_final(os.path.join(self.folder, name)):
                os.remove(os.path.join(self.folder, name))
        extra = self.select.end() if self.select is not None else {}
        batches = [b for b in batches if b.num_rows]
        self.pending = sum(b.num_rows for b in batches)
        new_state = {**state, **extra, "wal": offsets}
        if batches:
            rows = _unify(batches)
            new_state["rows"] = self.committed + rows.num_rows
            self.table.append(rows, new_state)
            self.committed += rows.num_rows
            self.commits += 1
            self.last_commit = time.time()
            self.pending = 0
        state.clear()
        state.update(new_state)

    def _write_status(self) -> None:
        status = {"pid": os.getpid(), "updated": time.time(), "interval": self.interval,
                  "rows_committed": self.committed, "rows_pending": self.pending, "commits": self.commits,
                  "last_commit": self.last_commit, "failing_since": self.failing_since, "error": self.error}
        temporary = os.path.join(self.folder, f".{STATUS_FILE}.{os.getpid()}")
        try:
            with open(temporary, "w") as fh:
                json.dump(status, fh)
            os.replace(temporary, os.path.join(self.folder, STATUS_FILE))
        except OSError:
            log.exception("lakeinfer: cannot write the ledger status")
