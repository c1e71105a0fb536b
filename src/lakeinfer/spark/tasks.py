"""The job's units as Spark tasks that read, score and write with pyarrow in the Python worker.

Spark schedules (a task per unit, retried and placed by Spark) and the rows never enter the JVM:
each task reads its unit (a file, or a run of a Parquet file's row groups) with the local
engine's reader, scores it with the Python worker's one runtime (the model loads once per
worker, as in :mod:`lakeinfer.spark.scoring`) and writes its part with the local engine's
commit protocol. The tasks run over ``spark.range`` through ``mapInArrow`` (Spark Connect APIs
only), each answering with its unit's result; the driver plans, resumes and records exactly as
the local engine does (:func:`lakeinfer.engines.units.run_units`).

Where this pays: Spark's own Parquet reader, its row and Arrow conversions and its writer took
16 of a 2M-row job's 20 core-seconds; here the JVM only hands out tasks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from .. import errors
from ..cpu import available_cores
from ..engines.unit_worker import UnitJob, UnitScorer
from ..engines.units import ProgressBar, UnitRunner, checked
from ..io.sources import Unit
from ..runtime import PipelineRecipe
from .scoring import Shipped, ship, worker_runtime

__all__ = ["SparkTasks"]

RESULT = pa.schema([("result", pa.string())])


def _run_units(ids: Iterator[pa.RecordBatch], shipped: Shipped, units: dict[int, Unit],
               job: UnitJob) -> Iterator[pa.RecordBatch]:
    """A task: each unit it was given, scored into its part; a row of JSON per unit (its stats,
    or its error in the wire format)."""
    for batch in ids:
        for index in batch.column(0).to_pylist():
            unit = units[index]
            try:
                runtime, loaded = worker_runtime(shipped)
            except errors.LakeinferError as exc:
                result = UnitScorer(None, load_error=errors.to_wire(exc)).run(unit, job)
            else:
                result = UnitScorer(runtime).run(unit, job)
                result["loads"] = int(loaded)  # this worker's loads for this job add up on the driver
            yield pa.RecordBatch.from_arrays([pa.array([json.dumps(result)])], schema=RESULT)


class SparkTasks(UnitRunner):
    """Units scored by Spark tasks, one task a unit. The session starts on a thread while the
    driver checks the model on a few rows; ``open_session`` is called once, there."""

    def __init__(self, open_session: Any, recipe: PipelineRecipe, model_path_on_cluster: str | None,
                 slots: int | None, units: int) -> None:
        self.recipe = recipe
        self.model_path_on_cluster = model_path_on_cluster
        self.scorers = slots or available_cores()  # tasks at once: whether each reads ahead (overlap_io)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lakeinfer-spark-start")
        # no session for a job with nothing left to score (a finished job's rerun)
        self._spark: Future[Any] | None = self._pool.submit(open_session) if units else None

    def run(self, todo: list[Any], job: UnitJob, bar: ProgressBar) -> list[dict[str, Any]]:
        if not todo or self._spark is None:
            return []
        spark = self._spark.result()
        shipped = ship(spark, self.recipe, self.model_path_on_cluster)
        self.threads = shipped.threads
        units = {i: unit for i, unit in enumerate(todo)}
        from pyspark.sql.pandas.types import from_arrow_schema

        tasks = spark.range(0, len(todo), 1, len(todo))
        rows = tasks.mapInArrow(lambda ids: _run_units(ids, shipped, units, job), from_arrow_schema(RESULT)).collect()
        results = [checked(json.loads(row[0])) for row in rows]
        loads: dict[int, int] = {}
        for result in results:
            loads[result["pid"]] = loads.get(result["pid"], 0) + result["loads"]
            bar.put(result.get("rows_in", 0))
        for result in results:  # the summary counts each worker's loads once
            result["loads"] = loads[result["pid"]]
        self.workers = sum(1 for n in loads.values() if n)
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)
