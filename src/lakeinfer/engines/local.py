"""The embedded local engine: a pool of worker processes, each loading the model once,
reading its own units straight from the input and writing its own Parquet parts."""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
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

from .. import errors
from ..cpu import available_cores, default_processes, own_threads, threads_each
from ..runtime import ModelRuntime, PipelineRecipe
from . import unit_worker
from .summary import BatchSummary
from .units import ProgressBar, UnitRunner, checked, run_units

if TYPE_CHECKING:
    from ..job import BatchJob

__all__ = ["ENGINE", "LocalEngine"]


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
        return run_units(job, lambda units: LocalRunner(job.recipe, job.workers, units))


ENGINE = LocalEngine()


class LocalRunner(UnitRunner):
    """Worker processes (spawned, each loading the model once), this process scoring beside them;
    or scoring threads in this process over one runtime."""

    def __init__(self, recipe: PipelineRecipe, workers: int | None, units: int) -> None:
        self.workers, threads, self.spread = plan_workers(recipe, workers, units)
        self.per_worker = threads
        self.threads = threads * self.spread
        # Worker processes start now. The parent loads the model anyway (for the checks) and
        # scores too: one process fewer to start.
        self.pool = _Scorers.processes(recipe, self.workers - 1, self.workers) if self.workers > 1 else None
        self.scorers = self.workers if self.workers > 1 else self.threads
        self.driver_threads = 1 if self.pool or self.threads > 1 else own_threads()

    def begin(self, runtime: ModelRuntime, bar: ProgressBar) -> None:
        if self.pool is None:
            self.pool = _Scorers.threads(runtime, self.per_worker, bar)
        else:
            self.pool.join_in(runtime, bar)

    def run(self, todo: list[Any], job: unit_worker.UnitJob, bar: ProgressBar) -> list[dict[str, Any]]:
        assert self.pool is not None
        return self.pool.run(todo, job, bar)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class _Scorers:
    """Runs units on an executor, a bounded number in flight, and gathers their results."""

    def __init__(self, executor: Executor, width: int, feed: Any = None,
                 task: Callable[[Any, unit_worker.UnitJob], dict[str, Any]] = unit_worker.run_unit) -> None:
        self.executor = executor
        self.width = width
        self.feed = feed
        self.task = task
        self.local: tuple[ThreadPoolExecutor, Callable[[Any, unit_worker.UnitJob], dict[str, Any]]] | None = None

    def join_in(self, runtime: ModelRuntime, bar: ProgressBar) -> None:
        """This process scores units too, one at a time, beside the worker processes."""
        scorer = unit_worker.UnitScorer(runtime, bar)
        self.local = (ThreadPoolExecutor(1, thread_name_prefix="lakeinfer-score"), scorer.run)

    @classmethod
    def processes(cls, recipe: PipelineRecipe, workers: int, scorers: int) -> _Scorers:
        """Spawned worker processes, each loading the model once in its initializer, started now;
        ``scorers``: all that will score, the parent included (they share the cores)."""
        context = multiprocessing.get_context("spawn")
        feed = context.Queue()
        threads = threads_each(scorers)
        executor = ProcessPoolExecutor(workers, mp_context=context, initializer=unit_worker.init_worker,
                                       initargs=(recipe, threads, feed))
        for _ in range(workers):
            executor.submit(unit_worker.ready)
        return cls(executor, workers, feed)

    @classmethod
    def threads(cls, runtime: ModelRuntime, threads: int, bar: ProgressBar) -> _Scorers:
        """Scoring threads in this process over the one runtime already built (this job's own)."""
        scorer = unit_worker.UnitScorer(runtime, bar)
        return cls(ThreadPoolExecutor(threads, thread_name_prefix="lakeinfer-score"), threads, task=scorer.run)

    def run(self, todo: list[Any], job: unit_worker.UnitJob, bar: ProgressBar) -> list[dict[str, Any]]:
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
                    results.append(checked(future.result()))
        except BrokenProcessPool as exc:
            raise errors.LakeinferError(f"a worker process died ({exc}); rerun the job to resume it") from exc
        finally:
            for future in running:
                future.cancel()
            self._pump(bar)

    def _pump(self, bar: ProgressBar) -> None:
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


