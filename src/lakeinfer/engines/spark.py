"""``engine=spark``: the job on Apache Spark, in one of two ways, chosen per job (``spark_io``)
and named in the summary:

- ``arrow``, for files in and a folder out: Spark schedules a task per unit, and each task reads,
  scores and writes its unit with pyarrow in the Python worker (:mod:`lakeinfer.spark.tasks`),
  planned, resumed and recorded as on the local engine; no row enters the JVM.
- ``spark``, for tables, ``--partition-by``, Spark ML PipelineModels and file systems pyarrow
  does not reach: read and written by Spark, scored through ``mapInArrow``
  (:func:`lakeinfer.spark.score`). A folder output is written with Spark's commit protocol and
  recorded with the local engine's :class:`~lakeinfer.io.sinks.OutputFolder` (the same
  fingerprint, manifest and completion record, on any file system); a table output gets one
  commit (:mod:`lakeinfer.spark.tables`).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from .. import errors
from ..io import table_job, tables
from ..io.sinks import MANIFEST, SUCCESS, OutputFolder
from .summary import BatchSummary, committed_summary, empty_summary, recorded_summary

if TYPE_CHECKING:
    from ..job import BatchJob
    from ..spark.scoring import ScoreStats

__all__ = ["ENGINE", "SparkEngine"]


class SparkEngine:
    """``engine=spark``: a Spark session of the job's own (``master``, ``spark_conf``)."""

    name = "spark"

    def run(self, job: BatchJob) -> BatchSummary:
        start = time.perf_counter()
        if job.tables.staging is not None and (tables.is_table(job.input) or tables.is_table(job.output)):
            table_job.check_table_options(job)
            raise errors.ConfigError("--staging is for the local engine: on Spark the data files wait in the "
                                     "table's own location until the one commit publishes them")
        if job.partition_by and tables.is_table(job.output):
            raise errors.ConfigError("--partition-by is for folder outputs; an output table keeps its own layout")
        if io_of(job) == ARROW:
            try:
                return _run_tasks(job)
            except errors.LakeinferError:
                raise
            except Exception as exc:
                from ..spark.scoring import lakeinfer_error

                raise lakeinfer_error(exc) from exc
        # planned before Spark starts: a missing input or a bad table is one line, without a JVM
        plan = table_job.plan_job(job)
        if plan.out is not None:
            assert plan.job_id is not None
            if tables.is_table(job.input) and not plan.source.units:
                return empty_summary(job.output, plan.job_id, plan.empty_note, start)
            committed = plan.committed()
            if committed is not None:
                return committed_summary(job.output, plan.job_id, committed, start)
        fingerprint = {**plan.fingerprint, "partition_by": list(job.partition_by)}
        folder = None if plan.out is not None else OutputFolder(job.output)
        if folder is not None:
            previous = folder.completed(fingerprint, overwrite=job.overwrite, redone=_attempt_leftover)
            if previous is not None:
                return recorded_summary(previous, start)
        try:
            return _run(job, plan, folder, fingerprint, start)
        except errors.LakeinferError:
            raise
        except Exception as exc:
            from ..spark.scoring import lakeinfer_error

            raise lakeinfer_error(exc) from exc


ENGINE = SparkEngine()
ARROW, SPARK = "arrow", "spark"
_ARROW_SCHEMES = ("", "file", "s3")  # what pyarrow reads itself, on every executor as on the driver


def io_of(job: BatchJob) -> str:
    """Who reads and writes the job's rows: ``arrow`` (the Python workers, with pyarrow) where
    nothing needs Spark's reader or writer, else ``spark``; ``spark_io`` chooses, and a choice
    of ``arrow`` that cannot hold is one line saying why."""
    if job.spark_io == SPARK:
        return SPARK
    reason = _needs_spark(job)
    if reason is None:
        return ARROW
    if job.spark_io == ARROW:
        raise errors.ConfigError(f"--spark-io arrow: {reason}; leave --spark-io out (or give spark)")
    return SPARK


def _needs_spark(job: BatchJob) -> str | None:
    for uri in (job.input, job.output):
        if tables.is_table(uri):
            return f"the table {uri} is read and written through Spark's catalog"
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        if scheme not in _ARROW_SCHEMES:
            return f"{uri}: the Python workers read and write local and s3:// paths, Spark's own file systems the rest"
    if job.partition_by:
        return "--partition-by is Spark's writer's"
    if job.recipe.model_flavor == "spark":
        return "a Spark ML PipelineModel runs in Spark itself"
    return None


def _run_tasks(job: BatchJob) -> BatchSummary:
    """The job as a task per unit (:class:`~lakeinfer.spark.tasks.SparkTasks`), planned, resumed
    and recorded by the local engine's :func:`~lakeinfer.engines.units.run_units`."""
    from ..spark.session import batch_defaults, connect_remote, session
    from ..spark.tasks import SparkTasks
    from .units import run_units

    remote = connect_remote(job.master, job.remote)
    conf = dict(job.spark_conf) if remote else {**batch_defaults(job.master), **job.spark_conf}
    # on Spark Connect a rerun joins its killed run's session and stops what it still runs there
    name = _identity({"io": ARROW}, job.output)

    def open_session() -> Any:
        return session(job.master, conf, remote=remote, job=name)

    slots = None if remote else _local_slots(job.master)
    summary = run_units(job, lambda units: SparkTasks(open_session, job.recipe, job.model_path_on_cluster,
                                                                slots, units))
    summary.io = ARROW
    return summary


def _local_slots(master: str | None) -> int | None:
    """The task slots of a ``local[N]`` master (None elsewhere: a cluster's)."""
    found = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\s*\d+)?\])?", (master or "").strip())
    if found is None:
        return None
    n = found.group(1)
    return 1 if n is None else None if n == "*" else int(n)


def _attempt_leftover(name: str) -> bool:
    """What a failed Spark attempt leaves in a folder output, redone by the next."""
    return name.startswith(("part-", ".", "_temporary", SUCCESS, MANIFEST)) or "=" in name


def _run(job: BatchJob, plan: table_job.TableJob, folder: OutputFolder | None, fingerprint: dict[str, Any],
         start: float) -> BatchSummary:
    from ..spark import tables as lake
    from ..spark.scoring import score
    from ..spark.session import batch_defaults, connect_remote, parquet_sample, read, session

    kinds = {ref.kind for ref in map(tables.parse_table, (job.input, job.output)) if ref is not None}
    remote = connect_remote(job.master, job.remote)
    if remote:  # a server's jars and extensions are its own: only the catalog's settings are the session's
        conf = dict(job.spark_conf)
        if "iceberg" in kinds and f"spark.sql.catalog.{job.tables.catalog}" not in conf:
            conf = {**lake.catalog_conf(job.tables.catalog), **conf}
    else:
        conf = {**batch_defaults(job.master), **job.spark_conf}
        if kinds:
            conf = lake.lake_conf(kinds, job.tables.catalog, dict(job.spark_conf))
    spark = session(job.master, conf, remote=remote, job=plan.job_id or _identity(fingerprint, job.output))
    if kinds:
        lake.check_jars(spark, kinds, conf, catalog=job.tables.catalog)
    if remote and plan.out is not None:  # a killed run's write, interrupted just now, may have landed
        committed = plan.committed()
        if committed is not None:
            assert plan.job_id is not None
            return committed_summary(job.output, plan.job_id, committed, start)
    sample = None
    if tables.is_table(job.input):
        df = lake.read_table(spark, plan, job.input, catalog=job.tables.catalog, where=job.tables.where)
    else:
        df, fmt, files = read(spark, job.input, job.input_format, plan.listed)
        if fmt == "parquet" and folder is not None:
            sample = parquet_sample(df, job.input, files, 64)
    stats: list[ScoreStats] = []
    scored = score(df, job.recipe, keep=job.keep, batch_size=job.batch_size, stats=stats, sample=sample,
                   model_path_on_cluster=job.model_path_on_cluster)
    if folder is not None:
        writer = scored.write.mode("overwrite")
        if job.partition_by:
            writer = writer.partitionBy(*job.partition_by)
        writer.parquet(job.output)
        rows_in, rows_out = stats[0].rows if stats else (spark.read.parquet(job.output).count(),) * 2
        summary = _summary(job.output, rows_in, rows_out, stats, parts=folder.count_parts(), start=start)
        summary.io = SPARK
        folder.record(fingerprint, summary.to_dict())
        return summary
    assert plan.out is not None and plan.job_id is not None
    schema = lake.output_schema(scored)
    plan.out.check_schema(schema)
    lake.write_table(scored, plan, catalog=job.tables.catalog, schema=schema)
    commit = plan.committed()
    if commit is None:  # the write returned without a commit carrying the job id: never report success
        raise errors.OutputError(f"the Spark job wrote to {job.output} but no commit carries job {plan.job_id}")
    rows_in, rows_out = stats[0].rows if stats else (int(commit.get(tables.ROWS, 0)),) * 2
    summary = _summary(job.output, rows_in, rows_out, stats, parts=1, start=start)
    summary.job_id, summary.commit = plan.job_id, commit.get("snapshot", commit.get("version"))
    summary.io = SPARK
    return summary


def _identity(fingerprint: dict[str, Any], output: str) -> str:
    """A folder job's name: its output and fingerprint."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([output, fingerprint], sort_keys=True, default=str).encode()).hexdigest()


def _summary(output: str, rows_in: int, rows_out: int, stats: list[ScoreStats], *, parts: int,
             start: float) -> BatchSummary:
    # stats is empty for a Spark ML PipelineModel: Spark runs it natively, no Python worker loads it
    return BatchSummary(output=output, rows=rows_out, rows_skipped=rows_in - rows_out, parts=parts,
                        parts_resumed=0, workers=stats[0].workers if stats else 0, threads=1,
                        model_loads=stats[0].model_loads if stats else 0, seconds=time.perf_counter() - start,
                        remarks=[s.note for s in stats if s.note])
