"""What a batch job with a table on either side is, shared by the local and the Spark engines.

Both engines plan the input the same way, derive the same job id from the same fingerprint and
find the same commits in the output table, so a job one engine committed is "already committed"
for the other, and an ``incremental`` run by either continues from the position the last run of
either recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import ConfigError
from . import tables
from .sources import list_input, plan_units
from .table_output import TableOutput, open_output

if TYPE_CHECKING:  # io sits below the job and the runtime: only their types here
    from ..job import BatchJob

__all__ = ["TableJob", "check_table_options", "plan_job"]


def check_table_options(job: BatchJob) -> None:
    """Refuse table options that do not fit the input and output."""
    input_uri, output_uri, t = job.input, job.output, job.tables
    where, snapshot, incremental, full, staging = t.where, t.snapshot, t.incremental, t.full, t.staging
    in_table, out_table = tables.is_table(input_uri), tables.is_table(output_uri)
    if not in_table:
        for name, value in (("--where", where), ("--snapshot", snapshot)):
            if value is not None:
                raise ConfigError(f"{name} is for table inputs (iceberg:NS.TABLE or delta:PATH)")
    if (incremental or full) and not (in_table and out_table):
        raise ConfigError("--incremental and --full need a table input and a table output "
                          "(iceberg:NS.TABLE or delta:PATH)")
    if incremental and snapshot is not None:
        raise ConfigError("--incremental scores up to the input's current snapshot; leave out --snapshot")
    if staging is not None and not out_table:
        raise ConfigError("--staging is for table outputs")


@dataclass
class TableJob:
    """A planned job: its input, its output table (None for a folder) and, for a table, its id."""

    source: tables.Source
    out: TableOutput | None
    fingerprint: dict[str, Any]
    since: str | None  # the input position the last run scored up to (incremental runs)
    replace: bool  # --full / --overwrite: the commit replaces the output table's rows
    incremental: bool
    listed: Any = None  # a folder input's (file system, files, format), as list_input gave them
    job_id: str | None = None

    def committed(self) -> dict[str, str] | None:
        """The properties of this job's commit, if it already made one."""
        return self.out.find_job(self.job_id) if self.out is not None and self.job_id else None

    def properties(self, *, rows: int | None = None, rows_skipped: int | None = None,
                   engine: str = "local") -> dict[str, str]:
        """What the commit carries: the job id, the input position and, where known before the
        commit, the row counts (Spark commits inside its write, before the counts are read)."""
        assert self.job_id is not None
        props = {tables.JOB_ID: self.job_id, "lakeinfer.version": __version__, "lakeinfer.engine": engine}
        if rows is not None:
            props[tables.ROWS] = str(rows)
        if rows_skipped is not None:
            props[tables.ROWS_SKIPPED] = str(rows_skipped)
        if self.source.input_id is not None and self.source.position is not None:
            props.update({tables.INPUT: self.source.input_id, tables.POSITION: self.source.position})
        return props

    @property
    def empty_note(self) -> str:
        return "nothing new" if self.incremental else "the input table is empty"


def plan_job(options: BatchJob, *, unit_rows: int | None = None) -> TableJob:
    """Plan the input (from the last run's position when ``incremental``) and name the job;
    ``unit_rows`` overrides the job's own (an engine whose reader picks its own splits: None)."""
    check_table_options(options)
    recipe, input_uri, output_uri, keep = options.recipe, options.input, options.output, options.keep
    input_format, overwrite, t = options.input_format, options.overwrite, options.tables
    catalog, where, snapshot, incremental, full = t.catalog, t.where, t.snapshot, t.incremental, t.full
    out = open_output(output_uri, catalog)
    since, listed = None, None
    if tables.is_table(input_uri):
        if incremental and not full:
            assert out is not None
            since = out.last_position(tables.table_input_id(input_uri, catalog) or "")
        source = tables.plan_table(input_uri, catalog=catalog, input_format=input_format, unit_rows=unit_rows,
                                   where=where, snapshot=snapshot, since=since)
    else:
        listed = fs, files, fmt = list_input(input_uri, input_format)
        units = plan_units(fs, files, fmt, unit_rows=unit_rows)
        source = tables.Source(fs, fmt, units, None, {
            "input": input_uri, "input_format": fmt, "files": [[f.path, f.size, f.mtime_ns] for f in files]})
    fingerprint = {
        "lakeinfer": __version__,
        **source.describe,
        "units": len(source.units),
        "keep": list(keep),
        "pipeline": recipe.describe(),
    }
    job = TableJob(source, out, fingerprint, since, bool(full or overwrite), bool(incremental), listed=listed)
    if out is not None:
        # the engine is not part of the job: either engine finds the other's commit of the same job
        fingerprint.update({"output": tables.input_id(out.ref, catalog), "since": since, "replace": job.replace})
        job.job_id = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return job
