"""The embedded local engine: a pool of worker processes, each loading the model once,
reading its own units straight from the input and writing its own Parquet parts."""

from __future__ import annotations

import multiprocessing
import queue
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from .. import errors
from ..cpu import available_cores, default_processes, own_threads, threads_each
from ..io import table_job, tables
from ..io.sinks import OutputFolder
from ..io.sources import read_schema
from ..runtime import ModelRuntime, PipelineRecipe
from . import _worker
from .summary import BatchSummary, committed_summary, empty_summary

if TYPE_CHECKING:
    from ..job import BatchJob

__all__ = ["ENGINE", "LocalEngine"]

SAMPLE_ROWS = 64


def plan_workers(recipe: PipelineRecipe, workers: int | None, units: int) -> tuple[int, int, int]:
    """(worker processes, scoring threads per process, threads per unit) for this model and this
    many units.

    By default one process per available core; for flavors with their own thread pool one
    process using every available core. Where the runtime takes concurrent calls (ONNX), the
    cores are shared out as single-threaded calls side by side, one unit per scoring thread and,
    with fewer units than cores, several batches of a unit at once: one call per core costs less
    than one call over every core, and every job's answers are bit for bit the same however its
    rows are split (a tree ensemble's multi-threaded sums differ in the last bits).
    """
    cores = available_cores()
    processes = max(1, min(workers or default_processes(recipe.model_flavor), units))
    if processes > 1 or not recipe.concurrent_calls:
        return processes, 1, 1
    threads = max(1, min(cores, units))
    return 1, threads, max(1, cores // threads)


class LocalEngine:
    """``engine=local``: this machine's cores, with no cluster."""

    name = "local"

    def run(self, job: BatchJob) -> BatchSummary:
        """Score the job's input into Parquet parts under its output folder, or into a table in
        one commit; see :func:`lakeinfer.batch`."""
        return run_batch(job)


ENGINE = LocalEngine()


def run_batch(options: BatchJob) -> BatchSummary:
    start = time.perf_counter()
    output_uri = options.output
    job = table_job.plan_job(options, unit_rows=options.unit_rows)
    source, fingerprint, out = job.source, job.fingerprint, job.out
    if out is None:
        return _score(options, source, fingerprint, output_uri, overwrite=options.overwrite, start=start)

    # A table output: the parts are staged under the job's id, then published in one commit.
    assert job.job_id is not None
    staged = out.staging_uri(job.job_id, options.tables.staging)
    if not source.units:
        return empty_summary(output_uri, job.job_id, job.empty_note, start)
    committed = job.committed()
    if committed is not None:
        out.drop_staging(staged)
        return committed_summary(output_uri, job.job_id, committed, start)
    summary = _score(options, source, fingerprint, staged, overwrite=False, start=start,
                     check_schema=out.check_schema)
    properties = job.properties(rows=summary.rows, rows_skipped=summary.rows_skipped)
    assert summary.schema is not None
    summary.commit = out.commit(staged, summary.schema, properties, replace=job.replace)
    summary.job_id = job.job_id
    out.drop_staging(staged)
    summary.seconds = time.perf_counter() - start
    return summary


def _score(options: BatchJob, source: tables.Source, fingerprint: dict[str, Any], folder_uri: str, *,
           overwrite: bool, start: float, check_schema: Callable[[pa.Schema], None] | None = None) -> BatchSummary:
    """Score the source's units into Parquet parts under ``folder_uri`` (the output folder, or a
    table output's staging folder), resuming its finished parts."""
    recipe, keep, batch_size, progress = options.recipe, options.keep, options.batch_size, options.progress
    fs, fmt, units = source.fs, source.fmt, source.units
    folder = OutputFolder(folder_uri)
    done = folder.check(fingerprint, overwrite=overwrite)
    todo = [u for u in units if u.index not in done]
    workers, threads, spread = plan_workers(recipe, options.workers, len(todo))
    # Worker processes start now, so their model loads overlap the checks below. The parent loads
    # the model anyway (for the checks) and scores too: one process fewer to start.
    pool = _Scorers.processes(recipe, workers - 1, workers) if workers > 1 else None
    try:
        # Check the model, the columns and the output schema on a few rows before writing anything.
        runtime: ModelRuntime | None = ModelRuntime(recipe, threads=1 if pool or threads * spread > 1 else own_threads())
        assert runtime is not None
        columns = runtime.read_columns(keep)
        probe = todo[0] if todo else units[0]
        sample = _sample(source, probe, runtime)
        # an input table's field ids name its columns, not the output's: the parts carry none
        schema = _without_field_ids(_output_schema(runtime, sample, keep, probe.path, probe.first_row))
        if check_schema is not None:
            check_schema(schema)
        folder.claim(fingerprint, overwrite=overwrite)
        scorers = workers if workers > 1 else threads * spread
        job = _worker.UnitJob(fs, fmt, batch_size, columns, folder_uri, schema, source.reader,
                              overlap=overlap_io(scorers, source, folder.fs), spread=spread)
        total_rows = sum(u.num_rows or 0 for u in todo) if fmt == "parquet" else None
        with _Bar(total_rows, progress and bool(todo)) as bar:
            if pool is None:
                pool = _Scorers.threads(runtime, threads, bar)
            else:
                pool.join_in(runtime, bar)
            runtime = None  # the scorers hold theirs
            results = pool.run(todo, job, bar)
    finally:
        if pool is not None:
            pool.close()

    stats = [*done.values(), *results]
    summary = BatchSummary(
        output=options.output,
        rows=sum(s.get("rows_out", 0) for s in stats),
        rows_skipped=sum(s.get("rows_skipped", 0) for s in stats),
        parts=len(units),
        parts_resumed=len(done),
        workers=workers if todo else 0,
        threads=threads * spread if todo else 0,
        model_loads=_model_loads(results),
        seconds=time.perf_counter() - start,
    )
    folder.finish({**summary.to_dict(), "fingerprint": fingerprint})
    summary.schema = schema
    return summary


def overlap_io(scorers: int, source: tables.Source, output_fs: pafs.FileSystem) -> bool:
    """Whether each scorer reads ahead and writes behind on threads of its own.

    That pays where a core or a scorer would otherwise wait: fewer scorers than cores, or data
    behind a network (object stores, a table's own reader). Where every core has a scorer over
    local files, reading and writing in line keeps the cores as busy with a third of the threads,
    and a batch is still in its core's cache when the model takes it (the bench's MLP on 10M rows:
    5.75 s -> 5.39 s).
    """
    local = source.reader is None and all(isinstance(fs, pafs.LocalFileSystem) for fs in (source.fs, output_fs))
    return scorers < available_cores() or not local


def _sample(source: tables.Source, unit: Any, runtime: ModelRuntime) -> pa.RecordBatch:
    """A few rows of ``unit``, read with all its columns so a missing one is named against them all."""
    sample = next(iter(source.read(unit, batch_size=SAMPLE_ROWS)), None)
    if sample is None and source.reader is not None:  # no rows (all filtered out): the table's schema
        sample = source.reader.empty()
    if sample is None and source.fmt == "parquet":  # no rows, but a schema: an empty input scores to empty parts
        sample = pa.RecordBatch.from_pylist([], schema=read_schema(source.fs, unit.path))
    if sample is None:
        raise errors.InputError(f"input file {unit.path} has no rows and no schema")
    columns = runtime.read_columns()
    if columns is not None:
        missing = [c for c in columns if c not in sample.schema.names]
        if missing:
            raise errors.SchemaError(f"input file {unit.path}: missing feature column '{missing[0]}' "
                                     f"(the input has: {', '.join(sample.schema.names) or 'no columns'})")
    return sample


def _without_field_ids(schema: pa.Schema) -> pa.Schema:
    fields = []
    for f in schema:
        meta = {k: v for k, v in (f.metadata or {}).items() if k != b"PARQUET:field_id"}
        fields.append(f.with_metadata(meta) if f.metadata else f)
    return pa.schema(fields, metadata=schema.metadata)


def _output_schema(runtime: ModelRuntime, sample: pa.RecordBatch, keep: Sequence[str], path: str,
                   first_row: int) -> pa.Schema:
    """The job's output schema from the sample; its errors name the file and the row."""
    try:
        return runtime.output_schema(sample, keep)
    except errors.BadRecordError as exc:
        raise _worker.bad_record(exc, path, first_row) from exc
    except (errors.SchemaError, errors.InputError) as exc:
        if path in str(exc) or "--keep" in str(exc):
            raise
        raise type(exc)(f"input file {path}: {exc}") from exc


def _model_loads(results: list[dict[str, Any]]) -> int:
    per_worker: dict[int, int] = {}
    for r in results:
        per_worker[r["pid"]] = r["loads"]
    return sum(per_worker.values())


class _Scorers:
    """Runs units on an executor, a bounded number in flight, and gathers their results."""

    def __init__(self, executor: Executor, width: int, feed: Any = None,
                 task: Callable[[Any, _worker.UnitJob], dict[str, Any]] = _worker.run_unit) -> None:
        self.executor = executor
        self.width = width
        self.feed = feed
        self.task = task
        self.local: tuple[ThreadPoolExecutor, Callable[[Any, _worker.UnitJob], dict[str, Any]]] | None = None

    def join_in(self, runtime: ModelRuntime, bar: _Bar) -> None:
        """This process scores units too, one at a time, beside the worker processes."""
        scorer = _worker.UnitScorer(runtime, bar)
        self.local = (ThreadPoolExecutor(1, thread_name_prefix="lakeinfer-score"), scorer.run)

    @classmethod
    def processes(cls, recipe: PipelineRecipe, workers: int, scorers: int) -> _Scorers:
        """Spawned worker processes, each loading the model once in its initializer, started now;
        ``scorers``: all that will score, the parent included (they share the cores)."""
        context = multiprocessing.get_context("spawn")
        feed = context.Queue()
        threads = threads_each(scorers)
        executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker.init_worker,
                                       initargs=(recipe, threads, feed))
        for _ in range(workers):
            executor.submit(_worker.ready)
        return cls(executor, workers, feed)

    @classmethod
    def threads(cls, runtime: ModelRuntime, threads: int, bar: _Bar) -> _Scorers:
        """Scoring threads in this process over the one runtime already built (this job's own)."""
        scorer = _worker.UnitScorer(runtime, bar)
        return cls(ThreadPoolExecutor(threads, thread_name_prefix="lakeinfer-score"), threads, task=scorer.run)

    def run(self, todo: list[Any], job: _worker.UnitJob, bar: _Bar) -> list[dict[str, Any]]:
        pending = iter(todo)
        running: set[Future[dict[str, Any]]] = set()
        here: set[Future[dict[str, Any]]] = set()  # this process's own unit, at most one
        results: list[dict[str, Any]] = []
        try:
            while True:
                while len(running) - len(here) < 2 * self.width:
                    unit = next(pending, None)
                    if unit is None:
                        break
                    running.add(self.executor.submit(self.task, unit, job))
                if self.local is not None and not here:
                    unit = next(pending, None)
                    if unit is not None:
                        here.add(self.local[0].submit(self.local[1], unit, job))
                        running |= here
                if not running:
                    return results
                finished, running = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                here -= finished
                self._pump(bar)
                for future in finished:
                    results.append(_checked(future.result()))
        except BrokenProcessPool as exc:
            raise errors.LakeinferError(f"a worker process died ({exc}); rerun the job to resume it") from exc
        finally:
            for future in running:
                future.cancel()
            self._pump(bar)

    def _pump(self, bar: _Bar) -> None:
        if self.feed is None:
            return
        rows = 0
        try:
            while True:
                rows += self.feed.get_nowait()
        except queue.Empty:
            pass
        bar.put(rows)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.local is not None:
            self.local[0].shutdown(wait=True, cancel_futures=True)


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise errors.from_wire(result["error"])
    return result


class _Bar:
    """The progress bar, fed row counts (``put``) by the in-process worker or the pool's queue."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="rows", unit_scale=True, dynamic_ncols=True, file=sys.stderr)

    def put(self, rows: int) -> None:
        if self._bar is not None and rows:
            self._bar.update(rows)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
