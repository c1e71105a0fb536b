"""The write-ahead log: where a served or streamed prediction's rows wait, on the local disk,
until the committer has shipped them to the ledger table.

A WAL folder holds segments (``<ns>-<pid>.wal``), each a run of frames appended by one writer
process; a frame is ``MAGIC``, the payload's length and CRC-32, then the payload, an Arrow IPC
stream of the rows of one request. The writer holds an exclusive ``flock`` on its open segment
for as long as it writes there: the kernel releases it when the writer closes the segment or
dies (kill -9 included), so a segment whose lock can be taken is final. A frame cut short by a
kill fails its length or CRC check, and the reader stops before it: that request was never
answered.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = ["MAGIC", "SegmentRead", "WalWriter", "encode_frame", "is_final", "read_segment", "segments"]

MAGIC = b"LKL1"
HEADER = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
SUFFIX = ".wal"
ROTATE_BYTES = 16 << 20
ROTATE_SECONDS = 60.0


def encode_frame(batch: pa.RecordBatch) -> bytes:
    """One frame holding ``batch`` (an Arrow IPC stream of its schema and rows)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    payload = sink.getvalue().to_pybytes()
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class SegmentRead:
    """What a segment holds from an offset on: its whole frames' batches, where each ends."""

    batches: list[pa.RecordBatch]
    ends: list[int]
    end: int


def read_segment(path: str, offset: int) -> SegmentRead:
    """The whole frames of ``path`` from ``offset``; a torn or partly written frame ends the read."""
    batches: list[pa.RecordBatch] = []
    ends: list[int] = []
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    at = 0
    while at + HEADER.size <= len(data):
        magic, length, crc = HEADER.unpack_from(data, at)
        start, stop = at + HEADER.size, at + HEADER.size + length
        if magic != MAGIC or stop > len(data):
            break
        payload = data[start:stop]
        if zlib.crc32(payload) != crc:
            break
        with pa.ipc.open_stream(payload) as reader:
            batches.append(reader.read_all().combine_chunks().to_batches()[0])
        at = stop
        ends.append(offset + at)
    return SegmentRead(batches, ends, offset + at)


def segments(folder: str) -> list[str]:
    """The segment files of a WAL folder, oldest first."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.endswith(SUFFIX))


def is_final(path: str) -> bool:
    """True when no writer holds ``path``: it will not grow again."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock taken, if any
    return True


def _concatenated(entries: list[Any]) -> pa.RecordBatch:
    return pa.Table.from_batches(entries).combine_chunks().to_batches()[0]


def _settle(group: list[tuple[Any, asyncio.Future[None]]], failed: list[BaseException | None]) -> None:
    for (_, future), problem in zip(group, failed, strict=True):
        if future.done():
            continue
        if problem is None:
            future.set_result(None)
        else:
            future.set_exception(problem)


class WalWriter:
    """One process's appender, in groups: the entries (requests) that arrive in one turn of the
    event loop (``sync``: while the previous group is being synced, on a thread) become one frame
    (``build``: entries to the frame's rows) and one ``write`` (``sync``: and one ``fdatasync``);
    each caller resumes once its rows are in the file (``sync``: on the disk)."""

    def __init__(self, folder: str, *, sync: bool = False,
                 build: Callable[[list[Any]], pa.RecordBatch] = _concatenated) -> None:
        self.folder = folder
        self.sync = sync
        self.build = build
        os.makedirs(folder, exist_ok=True)
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0
        self._pending: list[tuple[Any, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._scheduled = False
        self.rows = 0

    def _open(self) -> int:
        stamp = f"{time.time_ns():020d}-{os.getpid()}"
        temporary = os.path.join(self.folder, f"{stamp}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        # locked before it gets its name: the committer never sees an unlocked open segment
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temporary, os.path.join(self.folder, stamp + SUFFIX))
        self._fd, self._size, self._opened = fd, 0, time.monotonic()
        return fd

    def _write(self, data: bytes) -> None:
        """Runs on a thread: one group, in one segment (rotated first when full or old)."""
        if self._fd is not None and (self._size >= ROTATE_BYTES or time.monotonic() - self._opened > ROTATE_SECONDS):
            self._close_segment()
        fd = self._fd if self._fd is not None else self._open()
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.sync:
                os.fdatasync(fd)
        except OSError:
            self._close_segment()  # a segment with a torn frame takes no more: the next group starts a new one
            raise
        self._size += len(data)

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def append(self, entry: Any) -> None:
        """Return once ``entry``'s rows are in the log (raises OSError when they cannot be)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((entry, future))
        if self.sync:  # fdatasync takes milliseconds: on a thread, the next group gathering meanwhile
            if self._flusher is None or self._flusher.done():
                self._flusher = loop.create_task(self._flush())
        elif not self._scheduled:  # a write to the page cache takes microseconds: here, once the
            # requests resumed in this turn of the loop (a batch the batcher answered) have all appended
            self._scheduled = True
            loop.call_soon(self._flush_here)
        await future

    def _flush_here(self) -> None:
        self._scheduled = False
        group, self._pending = self._pending, []
        try:
            failed = self._write_group([entry for entry, _ in group])
        except Exception as exc:
            failed = [exc] * len(group)
        _settle(group, failed)

    def _write_group(self, entries: list[Any]) -> list[BaseException | None]:
        """On a thread: the group's frame written; per entry, None or why its rows are not in the log."""
        try:
            batches = [self.build(entries)]
            failed: list[BaseException | None] = [None] * len(entries)
        except Exception:  # one entry the frame cannot hold: each on its own, that one failing alone
            batches, failed = [], []
            for entry in entries:
                try:
                    batches.append(self.build([entry]))
                    failed.append(None)
                except Exception as exc:
                    failed.append(exc)
        if batches:
            self._write(b"".join(encode_frame(b) for b in batches))
            self.rows += sum(b.num_rows for b in batches)
        return failed

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = self._pending, []
            try:
                failed = await loop.run_in_executor(None, self._write_group, [entry for entry, _ in group])
            except Exception as exc:
                failed = [exc] * len(group)
            _settle(group, failed)

    def append_now(self, batch: pa.RecordBatch) -> None:
        """``append`` for a caller without an event loop (the stream): returns once written."""
        self._write(encode_frame(batch))
        self.rows += batch.num_rows

    def close(self) -> None:
        """Close the open segment (its lock goes with it: the committer may ship it to the end)."""
        self._close_segment()

