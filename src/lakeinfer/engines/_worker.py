"""What runs inside a local-engine worker process: build the pipeline once, then score units."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .. import errors
from ..io.overlap import WriteBehind, prefetch
from ..io.sinks import OutputFolder
from ..io.sources import Unit, read_unit
from ..pipeline import Pipeline
from ..runtime import PipelineRecipe


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs besides the unit itself; sent once per worker."""

    fs: pafs.FileSystem
    input_format: str
    batch_size: int
    columns: tuple[str, ...] | None
    output_uri: str
    schema: pa.Schema


class _State:
    pipeline: Pipeline | None = None
    load_error: tuple[str, str] | None = None
    loads = 0
    progress: Any = None


_STATE = _State()


def init_worker(recipe: PipelineRecipe, threads: int, progress: Any) -> None:
    """Process initializer: the model is loaded here, once for the life of the worker."""
    _watch_parent()
    _STATE.progress = progress
    try:
        _STATE.pipeline = recipe.build(threads=threads)
        _STATE.loads += 1
    except errors.LakeinferError as exc:  # reported with the first unit, as the real reason
        _STATE.load_error = (type(exc).__name__, str(exc))


def ready() -> int:
    """A no-op task that makes the pool start a worker (and load its model) right away."""
    return os.getpid()


def use_in_process(pipeline: Pipeline, progress: Any) -> None:
    """Run units in this process with an already built pipeline (``workers=1``)."""
    _STATE.pipeline, _STATE.progress, _STATE.loads = pipeline, progress, 1


def _watch_parent() -> None:
    # A worker whose parent was killed (kill -9) must not live on as an orphan.
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="lakeinfer-parent-watch", daemon=True).start()


def run_unit(unit: Unit, job: UnitJob) -> dict[str, Any]:
    """Score one unit into its part file; errors come back as data (they may not pickle)."""
    try:
        return _run_unit(unit, job)
    except errors.LakeinferError as exc:
        message = str(exc) if unit.path in str(exc) else f"input file {unit.path}: {exc}"
        return {"index": unit.index, "error": (type(exc).__name__, message)}
    except Exception as exc:  # a bug or an environment failure: keep the real reason
        return {"index": unit.index, "error": ("LakeinferError",
                                                f"input file {unit.path}: {type(exc).__name__}: {exc}")}


def _run_unit(unit: Unit, job: UnitJob) -> dict[str, Any]:
    pipeline = _STATE.pipeline
    if pipeline is None:
        return {"index": unit.index, "error": _STATE.load_error or ("ModelLoadError", "the model did not load")}
    folder = OutputFolder(job.output_uri)
    writer = folder.open_part(unit.index, job.schema)
    behind = WriteBehind(writer.write)
    rows_in = rows_out = 0
    try:
        batches = read_unit(job.fs, unit, job.input_format, batch_size=job.batch_size, columns=job.columns)
        for batch in prefetch(batches):
            try:
                scored = pipeline.transform(batch)
            except errors.BadRecordError as exc:
                raise errors.BadRecordError(
                    f"input file {unit.path}, row {unit.first_row + rows_in + exc.row}: "
                    f"feature column '{exc.column}' is null (use --on-error skip or null, or a fill_null step)",
                    column=exc.column, row=unit.first_row + rows_in + exc.row) from exc
            try:
                out = scored.select(job.schema.names).cast(job.schema)
            except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise errors.SchemaError(f"input file {unit.path}: output does not match the job's schema "
                                         f"{job.schema}: {exc}") from exc
            behind.put(out)
            rows_in += batch.num_rows
            rows_out += out.num_rows
            if _STATE.progress is not None:
                _STATE.progress.put(batch.num_rows)
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
    return {"index": unit.index, **stats, "pid": os.getpid(), "loads": _STATE.loads}
