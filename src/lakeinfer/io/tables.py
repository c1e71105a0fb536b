"""Lakehouse tables: Iceberg (through pyiceberg) and Delta Lake (through deltalake).

An input table is planned into units like a folder of Parquet files: one unit per Iceberg
file scan task, row groups of a Delta data file. An output table receives a job's
predictions in one commit (one Iceberg snapshot, one Delta version) that carries the job's
id and the input position it scored up to, in the snapshot summary / commit metadata: a
job found there has committed, and the next ``incremental`` run starts from that position.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import ConfigError, InputError, require
from .sources import InputFile, Unit, filesystem_for, plan_units, read_unit

__all__ = ["JOB_ID", "Source", "TableRef", "is_table", "parse_table", "plan_table"]

JOB_ID = "lakeinfer.job-id"
INPUT = "lakeinfer.input"
POSITION = "lakeinfer.input-position"
ROWS = "lakeinfer.rows"
ROWS_SKIPPED = "lakeinfer.rows-skipped"
STAGING = ".lakeinfer-staging"


@dataclass(frozen=True)
class TableRef:
    kind: str  # "iceberg" or "delta"
    name: str  # NAMESPACE.TABLE, or the Delta table's path / URI

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_table(uri: str) -> TableRef | None:
    """The table ``uri`` names: ``iceberg:NS.TABLE``, ``delta:PATH``, or a folder holding ``_delta_log``."""
    if uri.startswith("iceberg:"):
        name = uri[len("iceberg:"):]
        if "." not in name.strip("."):
            raise ConfigError(f"'{uri}': an Iceberg table is named iceberg:NAMESPACE.TABLE")
        return TableRef("iceberg", name)
    if uri.startswith("delta:"):
        path = uri[len("delta:"):]
        if not path:
            raise ConfigError(f"'{uri}': a Delta table is named delta:PATH")
        return TableRef("delta", path if "://" in path else os.path.abspath(path))
    if "://" not in uri and os.path.isdir(os.path.join(uri, "_delta_log")):
        return TableRef("delta", os.path.abspath(uri))
    return None


def is_table(uri: str) -> bool:
    return parse_table(uri) is not None


def input_id(ref: TableRef, catalog: str) -> str:
    """How an output table's commits name the input they scored."""
    return f"iceberg:{catalog}:{ref.name}" if ref.kind == "iceberg" else str(ref)


# --- Iceberg -------------------------------------------------------------------------------

def catalog_properties(name: str) -> dict[str, Any]:
    """The pyiceberg configuration of catalog ``name`` (``.pyiceberg.yaml``, ``PYICEBERG_CATALOG__*``),
    read now: pyiceberg's own copy is read once at import, which a long-lived process outlives."""
    require("pyiceberg.catalog", "lake", "an Iceberg table")
    from pyiceberg.utils.config import Config

    return dict(Config().get_catalog_config(name) or {})


def load_catalog(name: str) -> Any:
    catalog_module = require("pyiceberg.catalog", "lake", "an Iceberg table")
    try:
        return catalog_module.load_catalog(name, **catalog_properties(name))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot load Iceberg catalog '{name}': {first} (configure it in .pyiceberg.yaml or "
                          f"PYICEBERG_CATALOG__{name.upper()}__* environment variables)") from None


def load_iceberg(catalog: Any, name: str, catalog_name: str, what: str) -> Any:
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table(name)
    except (NoSuchTableError, NoSuchNamespaceError):
        if what == "output":
            return None
        raise InputError(f"input table iceberg:{name} does not exist in catalog '{catalog_name}'") from None


def _row_filter(where: str | None, schema: Any) -> Any:
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.expressions.parser import parse
    from pyiceberg.expressions.visitors import bind

    if where is None:
        return AlwaysTrue()
    try:
        expr = parse(where)
    except Exception as exc:
        where_at = f" at character {exc.loc + 1}" if hasattr(exc, "loc") else ""
        raise ConfigError(f"bad --where expression '{where}': cannot parse it{where_at}") from None
    try:
        bind(schema, expr, case_sensitive=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"bad --where expression '{where}': {first}") from None
    return expr


@dataclass
class IcebergReader:
    """Reads one file scan task per unit (deletes, renamed columns and the row filter applied)."""

    metadata: Any
    io: Any
    schema: Any
    row_filter: Any

    def read(self, unit: Unit, *, batch_size: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        from pyiceberg.io.pyarrow import ArrowScan

        projected = self.schema
        if columns is not None and set(columns) <= set(self.schema.column_names):
            projected = self.schema.select(*columns)
        try:
            batches = ArrowScan(self.metadata, self.io, projected, self.row_filter).to_record_batches([unit.task])
            for batch in batches:
                for start in range(0, batch.num_rows, batch_size):
                    yield batch.slice(start, batch_size)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise InputError(f"cannot read input file {unit.path}: {exc}") from exc

    def empty(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=self.schema.as_arrow())


def _appended_iceberg(table: Any, since: str, current: Any, uri: str) -> list[Any]:
    """The data files the append snapshots after ``since`` added; an error for any other change."""
    from pyiceberg.manifest import ManifestContent, ManifestEntryStatus
    from pyiceberg.table import FileScanTask
    from pyiceberg.table.snapshots import Operation

    snapshots = []
    snapshot = current
    while snapshot is not None and str(snapshot.snapshot_id) != since:
        operation = snapshot.summary.operation if snapshot.summary is not None else None
        if operation != Operation.APPEND:
            raise InputError(f"input table {uri} was changed by more than appends since the last run "
                             f"(snapshot {snapshot.snapshot_id}: {getattr(operation, 'value', operation)}); "
                             "rerun with --full to rescore everything")
        snapshots.append(snapshot)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    if snapshot is None:
        raise InputError(f"snapshot {since} of the last run is not in the history of input table {uri} "
                         "(expired or rewritten); rerun with --full to rescore everything")
    tasks = []
    for snap in reversed(snapshots):
        for manifest in snap.manifests(table.io):
            if manifest.added_snapshot_id != snap.snapshot_id or manifest.content != ManifestContent.DATA:
                continue
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snap.snapshot_id:
                    tasks.append(FileScanTask(entry.data_file))
    return tasks


def _plan_iceberg(ref: TableRef, uri: str, catalog_name: str, where: str | None, snapshot: str | None,
                  since: str | None, unit_rows: int | None) -> Source:
    catalog = load_catalog(catalog_name)
    table = load_iceberg(catalog, ref.name, catalog_name, "input")
    if snapshot is not None:
        try:
            current = table.snapshot_by_id(int(snapshot))
        except ValueError:
            current = None
        if current is None:
            raise InputError(f"input table {uri} has no snapshot {snapshot}")
    else:
        current = table.current_snapshot()
    scan = table.scan(snapshot_id=current.snapshot_id if current is not None else None)
    schema = scan.projection()
    row_filter = _row_filter(where, schema)
    position = str(current.snapshot_id) if current is not None else None
    if current is None or position == since:
        tasks = []
    elif since is not None:
        tasks = _appended_iceberg(table, since, current, uri)
    else:
        tasks = list(table.scan(row_filter=row_filter, snapshot_id=current.snapshot_id).plan_files())
    for task in tasks:
        if task.delete_files:
            raise InputError(f"input table {uri}: data file {task.file.file_path} has delete files, which "
                             "lakeinfer does not read yet; compact the table first")
    files = [[t.file.file_path, t.file.file_size_in_bytes, None] for t in tasks]
    describe = {"input": input_id(ref, catalog_name), "input_format": "iceberg", "snapshot": position,
                "where": where, "files": files}
    plain = _plain_parquet(tasks, schema) if where is None else None
    if plain is not None:  # read as the Parquet files they are: row-group units, no scan layer
        fs, paths = plain
        inputs = [InputFile(p, int(t.file.file_size_in_bytes), None) for p, t in zip(paths, tasks, strict=True)]
        return Source(fs, "parquet", plan_units(fs, inputs, "parquet", unit_rows=unit_rows), None, describe,
                      input_id(ref, catalog_name), position, empty_schema=schema.as_arrow())
    units = [Unit(i, t.file.file_path, None, 0, t.file.record_count, task=t) for i, t in enumerate(tasks)]
    reader = IcebergReader(table.metadata, table.io, schema, row_filter)
    return Source(pafs.LocalFileSystem(), "iceberg", units, reader, describe, input_id(ref, catalog_name),
                  position)


def _plain_parquet(tasks: list[Any], schema: Any) -> tuple[pafs.FileSystem, list[str]] | None:
    """The data files' file system and paths when each is a Parquet file holding exactly the
    table's columns (same names, types and field ids; no delete files), so reading it as a file
    gives what pyiceberg's scan would; None when any is not (renamed or promoted columns,
    partition values kept only in the metadata, other formats): those go through the scan."""
    import pyarrow.parquet as pq
    from pyiceberg.manifest import FileFormat

    if not tasks or any(t.delete_files or t.file.file_format != FileFormat.PARQUET for t in tasks):
        return None
    expected = schema.as_arrow()
    want = [(f.name, f.type, (f.metadata or {}).get(b"PARQUET:field_id")) for f in expected]
    found = [filesystem_for(t.file.file_path) for t in tasks]
    fs = found[0][0]
    if any(type(f) is not type(fs) for f, _ in found):
        return None
    for _, path in found:
        try:
            with fs.open_input_file(path) as fh:
                got = pq.read_schema(fh)
        except (OSError, pa.ArrowException):
            return None  # the scan reports it, naming the file
        have = [(f.name, f.type, (f.metadata or {}).get(b"PARQUET:field_id")) for f in got]
        if len(have) != len(want) or any(
                n != m or not _same_type(t, u) or (i is not None and j is not None and i != j)
                for (n, t, i), (m, u, j) in zip(have, want, strict=True)):
            return None
    return fs, [path for _, path in found]


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal, but for the 32/64-bit offsets of strings, binaries and lists (the same values)."""
    def norm(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t):
            return pa.string()
        if pa.types.is_large_binary(t):
            return pa.binary()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(norm(t.value_type))
        return t

    return bool(norm(a) == norm(b)) and not pa.types.is_timestamp(a)  # timestamps: units and zones vary


# --- Delta ---------------------------------------------------------------------------------

def delta_table(ref: TableRef, version: int | None = None) -> Any:
    deltalake = require("deltalake", "lake", "a Delta table")
    try:
        return deltalake.DeltaTable(ref.name, version=version)
    except Exception as exc:
        if version is not None:
            raise InputError(f"version {version} of input table {ref} cannot be loaded ({str(exc).splitlines()[0]}); "
                             "rerun with --full to rescore everything") from None
        raise InputError(f"input table {ref} does not exist or is not a Delta table: "
                         f"{str(exc).splitlines()[0]}") from None


def _join(base: str, name: str) -> str:
    from urllib.parse import unquote

    return f"{base.rstrip('/')}/{unquote(name)}"


def _plan_delta(ref: TableRef, input_format: str | None, unit_rows: int | None, where: str | None,
                snapshot: str | None, since: str | None) -> Source:
    if where is not None:
        raise ConfigError("--where filters Iceberg inputs; it is not supported for Delta tables")
    try:
        version = int(snapshot) if snapshot is not None else None
    except ValueError:
        raise ConfigError(f"--snapshot of a Delta table is a version number, not '{snapshot}'") from None
    table = delta_table(ref, version)
    if table.metadata().partition_columns:
        raise InputError(f"input table {ref} is partitioned ({', '.join(table.metadata().partition_columns)}); "
                         "lakeinfer reads unpartitioned Delta tables only")
    mapping = table.metadata().configuration.get("delta.columnMapping.mode", "none")
    features = set(table.protocol().reader_features or [])
    if mapping != "none" or "deletionVectors" in features:
        raise InputError(f"input table {ref} uses column mapping or deletion vectors, which lakeinfer does not read")
    position = str(table.version())
    actions = pa.table(table.get_add_actions(flatten=True))
    paths = actions.column("path").to_pylist()
    sizes = dict(zip(paths, actions.column("size_bytes").to_pylist(), strict=True))
    if since == position:
        paths = []
    elif since is not None:
        before = set(delta_table(ref, int(since)).get_add_actions(flatten=True).column("path").to_pylist())
        gone = before - set(paths)
        if gone:
            raise InputError(f"input table {ref} was changed by more than appends since version {since} "
                             f"({len(gone)} data files removed); rerun with --full to rescore everything")
        paths = [p for p in paths if p not in before]
    fs, base = filesystem_for(ref.name)
    files = [InputFile(_join(base, p), int(sizes[p]), None) for p in sorted(paths)]
    units = plan_units(fs, files, "parquet", unit_rows=unit_rows) if files else []
    describe = {"input": str(ref), "input_format": "delta", "snapshot": position,
                "files": [[f.path, f.size] for f in files]}
    return Source(fs, "parquet", units, None, describe, str(ref), position,
                  empty_schema=pa.schema(table.schema().to_arrow()))


# --- sources -------------------------------------------------------------------------------

@dataclass
class Source:
    """A planned input: its units and how to read them."""

    fs: pafs.FileSystem
    fmt: str
    units: list[Unit]
    reader: Any  # an IcebergReader, or None to read the units as files
    describe: dict[str, Any]
    input_id: str | None = None  # a table's name in output commits; None for files
    position: str | None = None  # the snapshot id / version read
    empty_schema: pa.Schema | None = field(default=None, repr=False)

    def read(self, unit: Unit, *, batch_size: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        if self.reader is not None:
            return self.reader.read(unit, batch_size=batch_size, columns=columns)  # type: ignore[no-any-return]
        return read_unit(self.fs, unit, self.fmt, batch_size=batch_size, columns=columns)


def plan_table(uri: str, *, catalog: str, input_format: str | None = None, unit_rows: int | None = None,
               where: str | None = None, snapshot: str | None = None, since: str | None = None) -> Source:
    """Plan a table input, from ``since`` (the position a previous run scored up to) when given."""
    ref = parse_table(uri)
    assert ref is not None
    if input_format is not None:
        raise ConfigError(f"--input-format is for files; {uri} is a {ref.kind} table")
    if ref.kind == "iceberg":
        return _plan_iceberg(ref, uri, catalog, where, snapshot, since, unit_rows)
    return _plan_delta(ref, input_format, unit_rows, where, snapshot, since)


def table_input_id(uri: str, catalog: str) -> str | None:
    ref = parse_table(uri)
    return input_id(ref, catalog) if ref is not None else None
