"""One batch job's options, typed and frozen: merged once from a job spec, the command line and
the Python API (:meth:`BatchJob.resolve`), validated once by the spec's own schema, then read
directly by every engine.

Precedence, highest first: a value given to the command line or the API, the job spec's
``[batch]`` key, the default declared here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._spec_schema import merged
from .errors import ConfigError
from .runtime import PipelineRecipe

if TYPE_CHECKING:
    from .spec import JobSpec

__all__ = ["DEFAULT_BATCH_SIZE", "BatchJob", "TableOptions"]

DEFAULT_BATCH_SIZE = 16384


@dataclass(frozen=True, kw_only=True)
class TableOptions:
    """What picks the rows of a table input and how a table output is committed."""

    catalog: str = "default"
    """The pyiceberg catalog of ``iceberg:`` tables."""
    where: str | None = None
    """An Iceberg input's row filter (pyiceberg's syntax)."""
    snapshot: str | None = None
    """The Iceberg snapshot id (Delta version) of the input to read."""
    incremental: bool = False
    """Score only the input rows appended since the last run recorded in the output table."""
    full: bool = False
    """Score the whole input and replace the output table's rows."""
    staging: str | None = None
    """Where the local engine's parts wait for a table output's commit."""


@dataclass(frozen=True, kw_only=True)
class BatchJob:
    """Everything one batch job needs; engines take it whole (``Engine.run(job)``)."""

    recipe: PipelineRecipe
    """The pipeline: the model, its options and the other steps (``on_error`` lives there)."""
    input: str
    """A file, folder or glob (local or ``s3://``), or a table (``iceberg:NS.TABLE``, ``delta:PATH``)."""
    output: str
    """A folder of Parquet parts, or a table that gets the predictions in one commit."""
    engine: str = "local"
    """The engine's name in :data:`lakeinfer.engines.ENGINES`."""
    keep: tuple[str, ...] = ()
    """Input columns copied beside the predictions."""
    workers: int | None = None
    """Worker processes (local) or actors (ray); None: the engine's own rule for this flavor."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Rows per model call."""
    input_format: str | None = None
    """``parquet``, ``csv`` or ``jsonl``; None: from the file names."""
    overwrite: bool = False
    """Replace what the output holds."""
    ray_address: str | None = None
    """The Ray cluster to join (``--engine ray``); None: ``RAY_ADDRESS``, else a private local Ray."""
    master: str | None = None
    """The Spark master (``--engine spark``)."""
    remote: str | None = None
    """A Spark Connect server, ``sc://HOST:PORT`` (``--engine spark``); None: ``SPARK_REMOTE`` where
    no master is given."""
    model_path_on_cluster: str | None = None
    """Where every Spark executor reads the same model (``--engine spark``), instead of shipping it
    as a session artifact; checked against the model's digest."""
    spark_io: str = "auto"
    """Who reads and writes the rows on ``--engine spark``: ``arrow`` (pyarrow in Spark's Python
    workers, a task per unit), ``spark`` (Spark's own reader and writer) or ``auto`` (``arrow``
    for files in and a folder out, else ``spark``)."""
    spark_conf: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Spark settings (``--engine spark``): the spec's, then the caller's on top."""
    partition_by: tuple[str, ...] = ()
    """Output columns that partition a folder output (``--engine spark``)."""
    tables: TableOptions = TableOptions()
    """Table inputs and outputs."""
    unit_rows: int | None = None
    """Rows per unit of work (Python API only; by default a file or row group's size)."""
    progress: bool = False
    """Show a progress bar on a terminal."""

    @classmethod
    def resolve(cls, *, spec: JobSpec | None = None, model: str | PipelineRecipe | None = None,
                model_options: Mapping[str, Any] | None = None, progress: bool = False,
                unit_rows: int | None = None, **given: Any) -> BatchJob:
        """The job from a spec's ``[batch]`` and ``[model]``, with ``given`` (the keys of the spec's
        ``[batch]`` section; None: not given) on top, checked by the spec's schema.

        ``model`` is a path or a whole :class:`PipelineRecipe` (then ``model_options`` and the
        spec's ``[model]`` are not used); ``model_options`` are the recipe's fields (flavor,
        trust, features, device, steps).
        """
        from .engines import ENGINES
        from .spec import JobSpec

        job = spec if spec is not None else JobSpec()
        if given.get("spark_conf"):  # settings add up: the caller's win over the spec's
            given = {**given, "spark_conf": {**(job.batch.spark_conf or {}), **given["spark_conf"]}}
        section = merged(job.batch, given, "batch")
        if not section.input or not section.output:
            raise ConfigError("batch needs an input and an output (--input/--output or [batch] in the spec)")
        engine = section.engine or "local"
        if engine not in ENGINES:
            raise ConfigError(f"unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
        if isinstance(model, PipelineRecipe):  # the recipe is the whole model contract: nothing to merge
            recipe = model
        else:
            recipe = job.recipe(path=model, on_error=section.on_error, **dict(model_options or {}))
        if unit_rows is not None and unit_rows < 1:
            raise ConfigError(f"unit_rows must be at least 1, not {unit_rows}")
        return cls(
            recipe=recipe, input=section.input, output=section.output, engine=engine,
            keep=tuple(section.keep or ()), workers=section.workers,
            batch_size=section.batch_size or DEFAULT_BATCH_SIZE, input_format=section.input_format,
            overwrite=bool(section.overwrite), ray_address=section.ray_address, master=section.master, remote=section.remote,
            model_path_on_cluster=section.model_path_on_cluster, spark_io=section.spark_io or "auto",
            spark_conf=MappingProxyType({k: str(v) for k, v in (section.spark_conf or {}).items()}),
            partition_by=tuple(section.partition_by or ()),
            tables=TableOptions(
                catalog=section.catalog or "default", where=section.where,
                snapshot=None if section.snapshot is None else str(section.snapshot),
                incremental=bool(section.incremental), full=bool(section.full), staging=section.staging),
            unit_rows=unit_rows, progress=progress,
        )


def option_names() -> frozenset[str]:
    """Every option a job takes, by the spec's key (the table options' too)."""
    table = {f.name for f in fields(TableOptions)}
    return frozenset({f.name for f in fields(BatchJob)} - {"tables", "recipe"} | table | {"on_error"})
