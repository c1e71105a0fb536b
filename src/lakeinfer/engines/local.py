"""The embedded local engine: a pool of worker processes, each loading the model once,
reading its own units straight from the input and writing its own Parquet parts."""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from .. import errors
from .._version import __version__
from ..io.sinks import OutputFolder
from ..io.sources import UNIT_ROWS, list_input, plan_units, read_unit
from ..pipeline import ModelStep, Pipeline
from ..runtime import PipelineRecipe
from . import _worker

__all__ = ["BatchSummary", "run_batch"]

SAMPLE_ROWS = 64


@dataclass
class BatchSummary:
    output: str
    rows: int
    rows_skipped: int
    parts: int
    parts_resumed: int
    workers: int
    model_loads: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        resumed = f", {self.parts_resumed} resumed" if self.parts_resumed else ""
        return (f"scored {self.rows:,} rows ({self.rows_skipped:,} skipped) into {self.parts} parts{resumed} "
                f"at {self.output} in {self.seconds:.1f}s ({self.rows_per_second:,.0f} rows/s, "
                f"{self.workers} workers, {self.model_loads} model loads)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": self.rows_per_second}


def run_batch(recipe: PipelineRecipe, input_uri: str, output_uri: str, *, keep: Sequence[str] = (),
              workers: int | None = None, batch_size: int = 65536, input_format: str | None = None,
              overwrite: bool = False, unit_rows: int = UNIT_ROWS, progress: bool = False) -> BatchSummary:
    """Score ``input_uri`` into Parquet parts under ``output_uri``; see :func:`lakeinfer.batch`."""
    start = time.perf_counter()
    if batch_size < 1:
        raise errors.ConfigError(f"batch size must be at least 1, not {batch_size}")
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise errors.ConfigError(f"workers must be at least 1, not {workers}")
    fs, files, fmt = list_input(input_uri, input_format)
    units = plan_units(fs, files, fmt, unit_rows=unit_rows)
    workers = min(workers, len(units))

    # Check the model, the columns and the output schema on a few rows before writing anything.
    model = recipe.load_model(threads=1 if workers > 1 else None)
    pipeline = recipe.build(model=model)
    columns = tuple(dict.fromkeys([*model.input_columns, *keep])) if recipe.model_only else None
    sample = next(read_unit(fs, units[0], fmt, batch_size=SAMPLE_ROWS, columns=columns), None)
    if sample is None:
        raise errors.InputError(f"input file {units[0].path} has no rows and no schema")
    before, scored = _score_sample(pipeline, sample, units[0].path)
    for name in keep:
        if name not in scored.schema.names:
            raise errors.SchemaError(f"--keep column '{name}' is not in the input or a pipeline step dropped it "
                                     f"(the input has: {', '.join(sample.schema.names)})")
    # the output: the kept columns, then what the model and the steps after it wrote
    added = [n for n in scored.schema.names if n not in before]
    schema = pa.schema([scored.schema.field(n) for n in dict.fromkeys([*keep, *added])])

    fingerprint = {
        "lakeinfer": __version__,
        "input": input_uri,
        "input_format": fmt,
        "files": [[f.path, f.size, f.mtime_ns] for f in files],
        "units": len(units),
        "keep": list(keep),
        "pipeline": recipe.describe(),
        "schema": schema.to_string(show_schema_metadata=False),
    }
    folder = OutputFolder(output_uri)
    done = folder.claim(fingerprint, overwrite=overwrite)
    todo = [u for u in units if u.index not in done]
    job = _worker.UnitJob(fs, fmt, batch_size, columns, output_uri, schema)
    total_rows = sum(u.num_rows or 0 for u in todo) if fmt == "parquet" else None
    results = _run_units(recipe, model, pipeline, job, todo, workers, total_rows, progress)

    stats = [*done.values(), *results]
    summary = BatchSummary(
        output=output_uri,
        rows=sum(s.get("rows_out", 0) for s in stats),
        rows_skipped=sum(s.get("rows_skipped", 0) for s in stats),
        parts=len(units),
        parts_resumed=len(done),
        workers=workers if todo else 0,
        model_loads=_model_loads(results),
        seconds=time.perf_counter() - start,
    )
    folder.finish({**summary.to_dict(), "fingerprint": fingerprint})
    return summary


def _score_sample(pipeline: Pipeline, sample: pa.RecordBatch, path: str) -> tuple[set[str], pa.RecordBatch]:
    """The column names just before the model step, and the sample's pipeline output."""
    try:
        before = sample
        for _, step in pipeline.steps:
            if isinstance(step, ModelStep):
                break
            before = step.transform(before)
        return set(before.schema.names), pipeline.transform(sample)
    except errors.BadRecordError as exc:
        raise errors.BadRecordError(
            f"input file {path}, row {exc.row}: feature column '{exc.column}' is null "
            "(use --on-error skip or null, or a fill_null step)", column=exc.column, row=exc.row) from exc
    except (errors.SchemaError, errors.InputError) as exc:
        if path in str(exc):
            raise
        raise type(exc)(f"input file {path}: {exc}") from exc


def _model_loads(results: list[dict[str, Any]]) -> int:
    per_worker: dict[int, int] = {}
    for r in results:
        per_worker[r["pid"]] = r["loads"]
    return sum(per_worker.values())


def _run_units(recipe: PipelineRecipe, model: Any, pipeline: Any, job: _worker.UnitJob, todo: list[Any],
               workers: int, total_rows: int | None, progress: bool) -> list[dict[str, Any]]:
    if not todo:
        return []
    bar = _progress_bar(total_rows, progress)
    try:
        if workers == 1:
            _worker.use_in_process(pipeline, job, _BarFeed(bar))
            results = []
            for unit in todo:
                results.append(_checked(_worker.run_unit(unit)))
            return results
        del pipeline, model  # the workers load their own; the parent's copy is not needed now
        context = multiprocessing.get_context("spawn")
        feed = context.Queue()
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker.init_worker,
                                 initargs=(recipe, threads, job, feed)) as pool:
            return _drain(pool, todo, workers, feed, bar)
    finally:
        if bar is not None:
            bar.close()


def _drain(pool: ProcessPoolExecutor, todo: list[Any], workers: int, feed: Any, bar: Any) -> list[dict[str, Any]]:
    pending = iter(todo)
    running: set[Future[dict[str, Any]]] = set()
    results: list[dict[str, Any]] = []
    try:
        while True:
            while len(running) < 2 * workers:  # a bounded number of units in flight
                unit = next(pending, None)
                if unit is None:
                    break
                running.add(pool.submit(_worker.run_unit, unit))
            if not running:
                return results
            finished, running = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            _pump(feed, bar)
            for future in finished:
                results.append(_checked(future.result()))
    except BaseException:
        for future in running:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        _pump(feed, bar)


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        kind, message = result["error"]
        cls = getattr(errors, kind, errors.LakeinferError)
        if cls is errors.BadRecordError:
            raise errors.InputError(message)
        if not (isinstance(cls, type) and issubclass(cls, errors.LakeinferError)) or cls is errors.MissingExtraError:
            cls = errors.LakeinferError
        raise cls(message)
    return result


class _BarFeed:
    """The in-process stand-in for the workers' progress queue."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def put(self, rows: int) -> None:
        if self.bar is not None:
            self.bar.update(rows)


def _pump(feed: Any, bar: Any) -> None:
    rows = 0
    try:
        while True:
            rows += feed.get_nowait()
    except queue.Empty:
        pass
    if bar is not None and rows:
        bar.update(rows)


def _progress_bar(total: int | None, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", unit_scale=True, dynamic_ncols=True, file=sys.stderr)
