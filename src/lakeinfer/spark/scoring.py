"""The pipeline over a Spark DataFrame through ``mapInArrow``, the iterator pattern, with Spark
Connect APIs only, so that one path serves a classic session and a Spark Connect server alike.

The model is added to the session once as a file artifact named by its digest and written to one
folder per model on each machine; each Python worker builds the pipeline once, keeping it in a
process cache keyed by the model's digest and the recipe, so a model loads at most once per Python
worker for the whole job (again only if Spark recycles the worker). The counts (rows in and out,
model loads, the workers that loaded it) come back through an :class:`~pyspark.sql.Observation`:
each task ends its output with one row of counts, observed and then dropped.
Spark ML PipelineModels run natively with ``transform``; one this Spark cannot load (saved by a
newer Spark) is scored with lakeinfer's own reader inside ``mapInArrow``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from .. import errors
from ..models import detect_flavor, model_digest
from ..runtime import ModelRuntime, PipelineRecipe
from .ship import add_artifact, artifact_bytes, model_on_disk

__all__ = ["ScoreStats", "Shipped", "lakeinfer_error", "score", "ship", "worker_runtime"]

SAMPLE_ROWS = 64
NO_BYTE_CAP = 2**31 - 1
# per Python worker process: the recipe's key (model digest and every option) -> its runtime
_CACHE: dict[str, ModelRuntime] = {}
# the columns of each task's row of counts, null on every scored row
LOADS, PID, ROWS_IN, ROWS_OUT = "__lakeinfer_loads", "__lakeinfer_pid", "__lakeinfer_rows_in", "__lakeinfer_rows_out"
COUNTS = pa.schema([(LOADS, pa.int64()), (PID, pa.int64()), (ROWS_IN, pa.int64()), (ROWS_OUT, pa.int64())])


def _pyspark() -> Any:
    return errors.require("pyspark", "spark", "the Spark engine")


@dataclasses.dataclass(frozen=True)
class Shipped:
    """What each task receives: the recipe and the name of the artifact holding the model."""

    recipe: PipelineRecipe
    digest: str
    key: str  # the model's digest and the whole recipe: two recipes over one file never share
    is_dir: bool
    name: str
    artifact: str  # "": the model is read from cluster_path
    cluster_path: str | None  # where every executor reads the same model
    threads: int  # the model's own threads: the cores of one task (spark.task.cpus)
    counted: bool  # each task adds its row of counts


def ship(spark: Any, recipe: PipelineRecipe, model_path_on_cluster: str | None, *, counted: bool = False) -> Shipped:
    """What each task gets: the recipe, and the model as a session artifact (added once per
    session) or at ``model_path_on_cluster``."""
    path = recipe.model_path
    return Shipped(recipe=recipe, digest=recipe.digest, key=recipe.key, is_dir=os.path.isdir(path),
                    name=os.path.basename(path.rstrip("/")), cluster_path=model_path_on_cluster,
                    artifact="" if model_path_on_cluster else add_artifact(spark, path, recipe.digest),
                    threads=int(spark.conf.get("spark.task.cpus", "1") or 1), counted=counted)


def worker_runtime(shipped: Shipped) -> tuple[ModelRuntime, bool]:
    """The worker's runtime for the recipe, and whether this call loaded it."""
    runtime = _CACHE.get(shipped.key)
    if runtime is not None:
        return runtime, False
    if shipped.cluster_path:
        local = shipped.cluster_path
        if model_digest(local) != shipped.digest:
            raise errors.ModelLoadError(f"the model at {local} (--model-path-on-cluster) is not the one given as "
                                        f"the model (digest {shipped.digest[:12]})")
    else:
        local = model_on_disk(shipped.digest, shipped.name, shipped.is_dir, lambda: artifact_bytes(shipped.artifact))
    runtime = ModelRuntime(dataclasses.replace(shipped.recipe, model_path=local), threads=shipped.threads)
    _CACHE[shipped.key] = runtime
    return runtime, True


def _score_batches(batches: Iterator[pa.RecordBatch], shipped: Shipped, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    try:
        runtime, loaded = worker_runtime(shipped)
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
            if shipped.counted:
                out = pa.RecordBatch.from_arrays(
                    [*out.columns, *(pa.nulls(out.num_rows, f.type) for f in COUNTS)],
                    schema=pa.schema([*schema, *COUNTS]))
            yield out
        if shipped.counted:
            counts = [pa.nulls(1, f.type) for f in schema] + [
                pa.array([v], pa.int64()) for v in (int(loaded), os.getpid(), rows_in, rows_out)]
            yield pa.RecordBatch.from_arrays(counts, schema=pa.schema([*schema, *COUNTS]))
    except errors.LakeinferError as exc:
        # the wire format crosses the JVM inside the task's error text; the driver finds it there
        raise RuntimeError(errors.wire_text(exc)) from None


@dataclasses.dataclass
class ScoreStats:
    """Counters of one ``score`` call, read after the action that ran it (an Observation)."""

    observation: Any
    note: str | None = None  # how the model was scored where that is not the usual way

    def _values(self) -> dict[str, Any]:
        return dict(self.observation.get)

    @property
    def model_loads(self) -> int:
        return int(self._values().get("loads") or 0)

    @property
    def workers(self) -> int:
        return len(self._values().get("pids") or ())

    @property
    def rows(self) -> tuple[int, int]:
        """Rows in, rows out."""
        values = self._values()
        return int(values.get("rows_in") or 0), int(values.get("rows_out") or 0)


def _as_recipe(model: str | PipelineRecipe, options: dict[str, Any]) -> PipelineRecipe:
    if isinstance(model, PipelineRecipe):
        return model
    return PipelineRecipe(model_path=model, **{k: v for k, v in options.items() if v is not None})


def score(df: Any, model: str | PipelineRecipe, *, keep: Sequence[str] = (), features: Sequence[str] | None = None,
          flavor: str | None = None, trust: bool = False, on_error: str = "fail", steps: Sequence[Any] | None = None,
          batch_size: int | None = None, stats: list[ScoreStats] | None = None,
          sample: pa.RecordBatch | None = None, model_path_on_cluster: str | None = None) -> Any:
    """``df`` scored by the model (a path or a :class:`PipelineRecipe`): ``keep`` columns, then the outputs.

    ``sample`` (rows shaped like ``df``'s) gives the output schema; by default a few rows of ``df``.
    ``stats``, where given, gets the :class:`ScoreStats` of this call (not for a streaming ``df``).
    ``model_path_on_cluster``: where every executor reads the same model (checked against its
    digest), instead of the session artifact that ships it.

    A Spark ML PipelineModel folder runs natively through ``PipelineModel.load(...).transform``;
    one that this Spark cannot load is scored by lakeinfer's own reader, and ``stats`` notes it.
    """
    path = model.model_path if isinstance(model, PipelineRecipe) else model
    recipe = _as_recipe(model, {"flavor": flavor, "trust": trust, "on_error": on_error,
                                "features": tuple(features) if features else None,
                                "steps": tuple(steps) if steps else None})
    note = None
    if (flavor or recipe.flavor or detect_flavor(path)) == "spark":
        try:
            return _score_spark_ml(df, path, keep)
        except errors.ModelLoadError as exc:
            if not _newer_spark(path, df.sparkSession.version):
                raise
            # a newer Spark's model: lakeinfer's reader refuses what it cannot compute the same way
            note = f"{str(exc).split(' (saved by', 1)[0]}; scored with lakeinfer's own reader of Spark ML models"
            recipe = dataclasses.replace(recipe, flavor="spark")
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
    schema = pa.schema([f.with_nullable(True) for f in schema])  # a task's row of counts has no outputs
    counted = stats is not None
    shipped = ship(spark, recipe, model_path_on_cluster, counted=counted)
    from pyspark.sql.pandas.types import from_arrow_schema

    returned = pa.schema([*schema, *COUNTS]) if counted else schema
    scored = df.mapInArrow(lambda it: _score_batches(it, shipped, schema), from_arrow_schema(returned))
    if stats is None:
        return scored
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    observation = Observation()
    stats.append(ScoreStats(observation, note))
    observed = scored.observe(
        observation, F.sum(LOADS).alias("loads"), F.collect_set(F.when(F.col(LOADS) > 0, F.col(PID))).alias("pids"),
        F.sum(ROWS_IN).alias("rows_in"), F.sum(ROWS_OUT).alias("rows_out"))
    return observed.where(F.col(PID).isNull()).drop(*COUNTS.names)


def _newer_spark(path: str, running: str) -> bool:
    """Whether the model was saved by a Spark newer than the one running."""
    from ..models.sparkml import read_meta

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", text)[:3])

    try:
        return version(read_meta(path).spark_version) > version(running)
    except (errors.LakeinferError, ValueError):
        return False


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
