"""The pipeline over a Spark DataFrame through ``mapInArrow``, the iterator pattern.

The model's bytes are broadcast once and written to one folder per model on each machine; each
Python worker builds the pipeline once, keeping it in a process cache keyed by the model's digest
and the recipe, so a model loads at most once per Python worker for the whole job (again only if
Spark recycles the worker).
Spark ML PipelineModels run natively with ``transform``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from .. import errors
from ..models import detect_flavor
from ..runtime import ModelRuntime, PipelineRecipe
from .ship import model_on_disk, pack

__all__ = ["ScoreStats", "lakeinfer_error", "score"]

SAMPLE_ROWS = 64
NO_BYTE_CAP = 2**31 - 1
# per Python worker process: the recipe's key (model digest and every option) -> its runtime
_CACHE: dict[str, ModelRuntime] = {}


def _pyspark() -> Any:
    return errors.require("pyspark", "spark", "the Spark engine")


@dataclasses.dataclass(frozen=True)
class _Shipped:
    """What each task receives: the recipe, the broadcast model bytes and the load counters."""

    recipe: PipelineRecipe
    digest: str
    key: str  # the model's digest and the whole recipe: two recipes over one file never share
    is_dir: bool
    name: str
    payload: Any  # Broadcast[bytes]
    loads: Any  # Accumulator[int]
    pids: Any  # Accumulator[set[int]]
    counts: Any  # Accumulator[list[int]]: rows in, rows out
    threads: int  # the model's own threads: the cores of one task (spark.task.cpus)


def _worker_runtime(shipped: _Shipped) -> ModelRuntime:
    runtime = _CACHE.get(shipped.key)
    if runtime is None:
        local = model_on_disk(shipped.digest, shipped.name, shipped.is_dir, lambda: shipped.payload.value)
        runtime = ModelRuntime(dataclasses.replace(shipped.recipe, model_path=local), threads=shipped.threads)
        _CACHE[shipped.key] = runtime
        shipped.loads.add(1)
        shipped.pids.add({os.getpid()})
    return runtime


def _score_batches(batches: Iterator[pa.RecordBatch], shipped: _Shipped, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    try:
        runtime = _worker_runtime(shipped)
        rows_in = rows_out = 0
        for batch in batches:
            try:
                scored = runtime.transform(batch)
            except errors.BadRecordError as exc:
                raise errors.BadRecordError(
                    f"a row of the input: {exc.reason} (use --on-error skip or null, or a fill_null step)",
                    column=exc.column, row=exc.row, reason=exc.reason) from exc
            out = scored.select(schema.names).cast(schema)
            rows_in += batch.num_rows
            rows_out += out.num_rows
            yield out
        shipped.counts.add([rows_in, rows_out])
    except errors.LakeinferError as exc:
        # the wire format crosses the JVM inside the task's error text; the driver finds it there
        raise RuntimeError(errors.wire_text(exc)) from None


class _SetParam:
    """Accumulates sets (the pids of the Python workers that loaded the model)."""

    def zero(self, value: set[int]) -> set[int]:
        return set()

    def addInPlace(self, a: set[int], b: set[int]) -> set[int]:  # noqa: N802 (Spark's name)
        a |= b
        return a


class _PairParam:
    def zero(self, value: list[int]) -> list[int]:
        return [0, 0]

    def addInPlace(self, a: list[int], b: list[int]) -> list[int]:  # noqa: N802
        return [a[0] + b[0], a[1] + b[1]]


@dataclasses.dataclass
class ScoreStats:
    """Counters of one ``score`` call, read after the action that ran it."""

    loads: Any
    pids: Any
    counts: Any

    @property
    def model_loads(self) -> int:
        return int(self.loads.value)

    @property
    def workers(self) -> int:
        return len(self.pids.value)


def _as_recipe(model: str | PipelineRecipe, options: dict[str, Any]) -> PipelineRecipe:
    if isinstance(model, PipelineRecipe):
        return model
    return PipelineRecipe(model_path=model, **{k: v for k, v in options.items() if v is not None})


def score(df: Any, model: str | PipelineRecipe, *, keep: Sequence[str] = (), features: Sequence[str] | None = None,
          flavor: str | None = None, trust: bool = False, on_error: str = "fail", steps: Sequence[Any] | None = None,
          batch_size: int | None = None, stats: list[ScoreStats] | None = None,
          sample: pa.RecordBatch | None = None) -> Any:
    """``df`` scored by the model (a path or a :class:`PipelineRecipe`): ``keep`` columns, then the outputs.

    ``sample`` (rows shaped like ``df``'s) gives the output schema; by default a few rows of ``df``.

    A Spark ML PipelineModel folder runs natively through ``PipelineModel.load(...).transform``.
    """
    path = model.model_path if isinstance(model, PipelineRecipe) else model
    if (flavor or (model.flavor if isinstance(model, PipelineRecipe) else None) or detect_flavor(path)) == "spark":
        return _score_spark_ml(df, path, keep)
    recipe = _as_recipe(model, {"flavor": flavor, "trust": trust, "on_error": on_error,
                                "features": tuple(features) if features else None,
                                "steps": tuple(steps) if steps else None})
    spark = df.sparkSession
    if batch_size:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
        # Under a byte cap Spark sizes the Arrow batch it is filling after every row, walking all
        # its vectors: a sixth of the JVM's time in a job over narrow rows. Int.MaxValue is
        # Spark's own "no cap", which skips that check; the rows bound the batch instead.
        spark.conf.set("spark.sql.execution.arrow.maxBytesPerBatch", str(NO_BYTE_CAP))
    driver = ModelRuntime(recipe)  # the driver checks the model and derives the output schema
    if sample is None:  # a streaming DataFrame cannot be sampled: its caller passes rows
        table = df.limit(SAMPLE_ROWS).toArrow()
        sample = table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
            [], schema=table.schema)
    schema = driver.output_schema(sample, keep)
    del driver
    context = spark.sparkContext
    from pyspark.accumulators import AccumulatorParam

    set_param = type("SetParam", (_SetParam, AccumulatorParam), {})()
    pair_param = type("PairParam", (_PairParam, AccumulatorParam), {})()
    shipped = _Shipped(recipe=recipe, digest=recipe.digest, key=recipe.key, is_dir=os.path.isdir(path),
                       name=os.path.basename(path.rstrip("/")), payload=context.broadcast(pack(path)),
                       loads=context.accumulator(0), pids=context.accumulator(set(), set_param),
                       counts=context.accumulator([0, 0], pair_param),
                       threads=int(spark.conf.get("spark.task.cpus", "1") or 1))
    if stats is not None:
        stats.append(ScoreStats(shipped.loads, shipped.pids, shipped.counts))
    from pyspark.sql.pandas.types import from_arrow_schema

    return df.mapInArrow(lambda it: _score_batches(it, shipped, schema), from_arrow_schema(schema))


def _score_spark_ml(df: Any, path: str, keep: Sequence[str]) -> Any:
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT

    try:
        loaded = PipelineModel.load(path)
    except Exception as exc:
        raise _load_error(path, exc, df.sparkSession.version) from exc
    out = loaded.transform(df)
    added = [f for f in out.schema.fields if f.name not in df.columns]
    columns = [out[k] for k in keep]
    for field in added:
        value = vector_to_array(out[field.name]) if isinstance(field.dataType, VectorUDT) else out[field.name]
        columns.append(value.alias(field.name))
    return out.select(*columns)


# Spark's own reason inside a Py4J report: the first line of the JVM exception's message
_JVM_REASON = re.compile(r"^(?::\s*)?(?:[\w$]+\.)+[\w$]*(?:Exception|Error): (.+)$", re.MULTILINE)


def _load_error(path: str, exc: BaseException, running: str) -> errors.LakeinferError:
    """Spark could not load a Spark ML model: its reason, the Spark that saved the model and the
    one running, and the way around it (the JVM-free reader on the local engine)."""
    from ..models.sparkml import read_meta

    text = str(exc)
    found = _JVM_REASON.search(text)
    reason = found.group(1).strip() if found else next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    try:
        saved = read_meta(path).spark_version
    except errors.LakeinferError:
        saved = "an unknown version"
    return errors.ModelLoadError(
        f"Spark cannot load the Spark ML model {path}: {reason[:300].rstrip('.')} (saved by Spark {saved}, "
        f"running Spark {running}); score it without a JVM: leave out --engine spark, and the local engine "
        "reads the model itself")


_ERROR = re.compile(r"lakeinfer\.errors\.(\w+): (.+)")


def lakeinfer_error(exc: BaseException) -> errors.LakeinferError:
    """The lakeinfer error inside a failed Spark job's report, or one line of the Spark error."""
    text = str(exc)
    found = errors.find_wire(text)
    if found is not None:
        return found
    match = _ERROR.search(text)
    if match:
        cls = getattr(errors, match.group(1), errors.LakeinferError)
        message = match.group(2).strip()
        if cls in (errors.BadRecordError, errors.MissingExtraError) or not issubclass(cls, errors.LakeinferError):
            cls = errors.InputError if cls is errors.BadRecordError else errors.LakeinferError
        return cls(message)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return errors.LakeinferError(f"the Spark job failed: {first[:500]}")
