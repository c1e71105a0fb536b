"""What runs inside a local-engine worker process: build the pipeline once, then score units."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .. import errors
from ..io.overlap import WriteBehind, WriteInline, ordered_map, prefetch
from ..io.sinks import OutputFolder
from ..io.sources import Unit, read_unit
from ..runtime import ModelRuntime, PipelineRecipe


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs besides the unit itself; sent once per worker."""

    fs: pafs.FileSystem
    input_format: str
    batch_size: int
    columns: tuple[str, ...] | None
    output_uri: str
    schema: pa.Schema
    reader: Any = None  # reads a table's units (an Iceberg scan); None: units are files
    overlap: bool = True  # read ahead and write behind on threads of their own (else in line)
    spread: int = 1  # a unit's batches scored this many at a time (single-threaded calls side by side)

    def read(self, unit: Unit, *, batch_size: int, columns: Any = None) -> Any:
        return read_any(self.fs, self.input_format, self.reader, unit, batch_size=batch_size, columns=columns)


def read_any(fs: pafs.FileSystem, fmt: str, reader: Any, unit: Unit, *, batch_size: int,
             columns: Any = None) -> Any:
    """The unit's batches, from its file or through the table's reader."""
    if reader is not None:
        return reader.read(unit, batch_size=batch_size, columns=columns)
    return read_unit(fs, unit, fmt, batch_size=batch_size, columns=columns)


def bad_record(exc: errors.BadRecordError, path: str, first_row: int) -> errors.BadRecordError:
    """``exc`` (a row of one batch) as the file and the row in it, with what the user can do."""
    row = first_row + exc.row
    return errors.BadRecordError(
        f"input file {path}, row {row}: {exc.reason} (use --on-error skip or null, or a fill_null step)",
        column=exc.column, row=row, reason=exc.reason)


class UnitScorer:
    """Scores units with one runtime; one per job, so jobs in one process share nothing."""

    def __init__(self, runtime: ModelRuntime | None, progress: Any = None, *,
                 load_error: dict[str, Any] | None = None) -> None:
        self.runtime = runtime
        self.progress = progress
        self.load_error = load_error
        self.loads = 1 if runtime is not None else 0

    def run(self, unit: Unit, job: UnitJob) -> dict[str, Any]:
        """Score one unit into its part file; errors come back as data in the wire format."""
        try:
            return self._run(unit, job)
        except BaseException as exc:
            wire = errors.to_wire(exc)
            if unit.path not in wire["message"]:
                wire["message"] = f"input file {unit.path}: {wire['message']}"
            return {"index": unit.index, "error": wire}

    def _run(self, unit: Unit, job: UnitJob) -> dict[str, Any]:
        runtime = self.runtime
        if runtime is None:
            raise errors.from_wire(self.load_error or {"class": "ModelLoadError", "message": "the model did not load"})
        folder = OutputFolder(job.output_uri)
        writer = folder.open_part(unit.index, job.schema)
        behind = WriteBehind(writer.write) if job.overlap else WriteInline(writer.write)
        rows_in = rows_out = 0
        try:
            batches = job.read(unit, batch_size=job.batch_size, columns=job.columns)
            with closing(_scored(runtime, prefetch(batches) if job.overlap else batches, job.spread, unit)) as scored:
                for batch, out in scored:
                    try:
                        out = out.select(job.schema.names).cast(job.schema)
                    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise errors.SchemaError(f"input file {unit.path}: output does not match the job's schema "
                                                 f"{job.schema}: {exc}") from exc
                    behind.put(out)
                    rows_in += batch.num_rows
                    rows_out += out.num_rows
                    if self.progress is not None:
                        self.progress.put(batch.num_rows)
            behind.close()
            stats = {"rows_in": rows_in, "rows_out": rows_out, "rows_skipped": rows_in - rows_out}
            writer.commit(stats)
        except BaseException:
            try:
                behind.close()
            except BaseException:
                pass  # the first error is the one to report
            writer.abort()
            raise
        return {"index": unit.index, **stats, "pid": os.getpid(), "loads": self.loads}


def _scored(runtime: ModelRuntime, batches: Iterator[pa.RecordBatch], spread: int, unit: Unit
            ) -> Generator[tuple[pa.RecordBatch, pa.RecordBatch], None, None]:
    """Each batch with its outputs, in order, ``spread`` model calls at a time; a bad record is
    named by its file and row."""
    def transform(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return batch, runtime.transform(batch)

    results = ordered_map(transform, batches, spread) if spread > 1 else map(transform, batches)
    row = unit.first_row
    try:
        while True:
            try:
                done = next(results, None)
            except errors.BadRecordError as exc:  # every batch before it was yielded, in order
                raise bad_record(exc, unit.path, row) from exc
            if done is None:
                return
            yield done
            row += done[0].num_rows
    finally:
        for done_with in (results, batches):  # ordered_map's and read-ahead's threads stop now,
            close = getattr(done_with, "close", None)  # not when an error's traceback lets go
            if close is not None:
                close()


# A worker process serves one job for its whole life, so its scorer may live in the process.
_PROCESS_SCORER: UnitScorer | None = None


def init_worker(recipe: PipelineRecipe, threads: int, progress: Any) -> None:
    """Process initializer: the model is loaded here, once for the life of the worker."""
    global _PROCESS_SCORER
    _watch_parent()
    try:
        _PROCESS_SCORER = UnitScorer(ModelRuntime(recipe, threads=threads), progress)
    except errors.LakeinferError as exc:  # reported with the first unit, as the real reason
        _PROCESS_SCORER = UnitScorer(None, progress, load_error=errors.to_wire(exc))


def ready() -> int:
    """A no-op task that makes the pool start a worker (and load its model) right away."""
    return os.getpid()


def run_unit(unit: Unit, job: UnitJob) -> dict[str, Any]:
    """A worker process's task: the unit, scored by the process's own scorer."""
    assert _PROCESS_SCORER is not None, "init_worker did not run"
    return _PROCESS_SCORER.run(unit, job)


def _watch_parent() -> None:
    # A worker whose parent was killed (kill -9) must not live on as an orphan.
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="lakeinfer-parent-watch", daemon=True).start()
