"""An output table: where a job's predictions are staged, and the one commit (an Iceberg
snapshot, a Delta version) that publishes them with the job's id and the input position."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import ConfigError, OutputError, require
from .sources import filesystem_for
from .tables import (
    INPUT,
    JOB_ID,
    POSITION,
    ROWS,
    STAGING,
    TableRef,
    load_catalog,
    load_iceberg,
    parse_table,
)

if TYPE_CHECKING:
    import pyarrow.dataset as pads

__all__ = ["TableOutput", "open_output"]


def _plain(schema: pa.Schema) -> list[tuple[str, str]]:
    """Column names and types, without field ids, nullability or large/small variants."""
    def norm(t: pa.DataType) -> str:
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return f"list<{norm(t.value_type)}>"
        if pa.types.is_large_string(t):
            return "string"
        if pa.types.is_large_binary(t):
            return "binary"
        if pa.types.is_timestamp(t):
            return "timestamp" + ("tz" if t.tz else "")
        return str(t)

    return [(f.name, norm(f.type)) for f in schema]


class TableOutput:
    """An output table: where a job's parts are staged, and the one commit that publishes them."""

    def __init__(self, uri: str, ref: TableRef, catalog: str) -> None:
        self.uri = uri
        self.ref = ref
        self.catalog_name = catalog
        self.catalog: Any = load_catalog(catalog) if ref.kind == "iceberg" else None

    def _table(self) -> Any:
        if self.ref.kind == "iceberg":
            return load_iceberg(self.catalog, self.ref.name, self.catalog_name, "output")
        deltalake = require("deltalake", "lake", "a Delta table")
        try:
            return deltalake.DeltaTable(self.ref.name)
        except deltalake.exceptions.TableNotFoundError:
            return None

    def _commits(self) -> list[dict[str, str]]:
        """Each commit's properties, newest first, along the table's current history."""
        table = self._table()
        if table is None:
            return []
        if self.ref.kind == "delta":
            return [_delta_commit(h) for h in table.history()]
        commits = []
        snapshot = table.current_snapshot()
        while snapshot is not None:
            props = dict(snapshot.summary.additional_properties) if snapshot.summary is not None else {}
            # a Spark commit cannot carry the row counts (they are known after it): Iceberg's own count
            props.setdefault(ROWS, props.get("added-records", "0"))
            commits.append({**props, "snapshot": str(snapshot.snapshot_id)})
            parent = snapshot.parent_snapshot_id
            snapshot = table.snapshot_by_id(parent) if parent is not None else None
        return commits

    def find_job(self, job_id: str) -> dict[str, str] | None:
        """The properties of the commit that job ``job_id`` made, if it made one."""
        return next((c for c in self._commits() if c.get(JOB_ID) == job_id), None)

    def last_position(self, input_id: str) -> str | None:
        """The input position the latest commit from ``input_id`` scored up to."""
        return next((c[POSITION] for c in self._commits() if c.get(INPUT) == input_id and POSITION in c), None)

    def check_schema(self, schema: pa.Schema) -> None:
        table = self._table()
        if table is None:
            return
        theirs = table.schema().as_arrow() if self.ref.kind == "iceberg" else pa.schema(table.schema().to_arrow())
        if _plain(theirs) != _plain(schema):
            shown = ", ".join(f"{n}: {t}" for n, t in _plain(theirs))
            ours = ", ".join(f"{n}: {t}" for n, t in _plain(schema))
            raise OutputError(f"output table {self.uri} has the columns of another schema ({shown}); this job "
                              f"writes {ours}; choose another table")

    def staging_uri(self, job_id: str, staging: str | None) -> str:
        """Where the job's parts wait for the commit: ``staging`` or, for Delta, a hidden folder
        beside the table, for Iceberg ``.lakeinfer-staging`` in the current directory."""
        if staging is None and self.ref.kind == "delta":
            parent, _, name = self.ref.name.rstrip("/").rpartition("/")
            return f"{parent}/{STAGING}/{name}/{job_id}"
        root = staging or STAGING
        if "://" in root:
            return f"{root.rstrip('/')}/{job_id}"
        safe = self.ref.name.replace("/", "_")
        return os.path.join(os.path.abspath(root), f"{self.ref.kind}-{safe}", job_id)

    def drop_staging(self, staging_uri: str) -> None:
        fs, path = filesystem_for(staging_uri)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)
        if isinstance(fs, pafs.LocalFileSystem):  # the per-table and the staging folders, once empty
            try:
                os.rmdir(os.path.dirname(path))
                if os.path.basename(os.path.dirname(os.path.dirname(path))) == STAGING:
                    os.rmdir(os.path.dirname(os.path.dirname(path)))
            except OSError:
                pass  # not empty: another job's parts wait there

    def commit(self, staging_uri: str, schema: pa.Schema, properties: dict[str, str], *, replace: bool) -> str:
        """Publish every staged part in one commit; returns the snapshot id / version."""
        import pyarrow.dataset as pads  # here: importing it costs a job without tables 0.2 s (it loads pandas)

        fs, path = filesystem_for(staging_uri)
        data = pads.dataset(path, filesystem=fs, format="parquet", schema=schema)
        try:
            if self.ref.kind == "iceberg":
                return self._commit_iceberg(data, schema, properties, replace)
            return self._commit_delta(data, schema, properties, replace)
        except (OutputError, ConfigError):
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise OutputError(f"cannot commit to output table {self.uri}: {first}") from exc

    def _commit_iceberg(self, data: pads.Dataset, schema: pa.Schema, properties: dict[str, str],
                        replace: bool) -> str:
        table = self._table()
        if table is None:
            namespace = self.ref.name.rsplit(".", 1)[0]
            self.catalog.create_namespace_if_not_exists(namespace)
            table = self.catalog.create_table_if_not_exists(self.ref.name, schema=schema)
        linked = self._link_staged(table, data, properties[JOB_ID])
        with table.transaction() as tx:
            if linked is not None:  # the staged files themselves: no decode and re-encode
                if replace:
                    from pyiceberg.expressions import AlwaysTrue

                    tx.delete(AlwaysTrue(), snapshot_properties=properties)
                # the names hold the job id: no other commit references them, no need to scan for it
                tx.add_files(linked, snapshot_properties=properties, check_duplicate_files=False)
            else:
                rows = data.to_table().cast(table.schema().as_arrow())
                if replace:
                    tx.overwrite(rows, snapshot_properties=properties)
                else:
                    tx.append(rows, snapshot_properties=properties)
        snapshot = self._table().current_snapshot()
        return str(snapshot.snapshot_id) if snapshot is not None else "none"

    def _link_staged(self, table: Any, data: pads.Dataset, job_id: str) -> list[str] | None:
        """The staged Parquet parts hard-linked into the table's data folder (named by the job id,
        so a rerun after a crash links them again), when staging and table are on one local disk
        and the parts hold exactly the table's columns without field ids; else None."""
        import pyarrow.parquet as pq

        location = table.location()
        local = isinstance(data.filesystem, pafs.LocalFileSystem) and location.startswith(("file:/", "/"))
        if not local or not data.files:
            return None
        staged = pq.read_schema(data.files[0])
        if any(b"PARQUET:field_id" in (f.metadata or {}) for f in staged) or any(
                pa.types.is_timestamp(f.type) for f in staged) or _plain(staged) != _plain(table.schema().as_arrow()):
            return None
        folder = os.path.join(location.removeprefix("file://").removeprefix("file:"), "data")
        linked = []
        try:
            os.makedirs(folder, exist_ok=True)
            for path in sorted(data.files):
                target = os.path.join(folder, f"{job_id}-{os.path.basename(path)}")
                if os.path.exists(target):
                    os.remove(target)
                os.link(path, target)
                linked.append(target)
        except OSError:  # another disk, no hard links: the rows are re-encoded by append instead
            for target in linked:
                os.remove(target)
            return None
        return [f"file://{t}" for t in linked]

    def _commit_delta(self, data: pads.Dataset, schema: pa.Schema, properties: dict[str, str],
                      replace: bool) -> str:
        import deltalake

        deltalake.write_deltalake(
            self.ref.name, data.scanner().to_reader(), mode="overwrite" if replace else "append",
            commit_properties=deltalake.CommitProperties(custom_metadata=properties))
        return str(deltalake.DeltaTable(self.ref.name).version())


def _delta_commit(info: dict[str, Any]) -> dict[str, str]:
    """A Delta commit's properties: delta-rs puts them in commitInfo itself, delta-spark (the Spark
    engine's writes) in ``userMetadata`` as one JSON object."""
    props = {k: str(v) for k, v in info.items()}
    try:
        extra = json.loads(info.get("userMetadata") or "null")
    except ValueError:
        extra = None  # someone else's user metadata
    if isinstance(extra, dict) and JOB_ID in extra:
        props.update({k: str(v) for k, v in extra.items()})
        metrics = info.get("operationMetrics") or {}
        props.setdefault(ROWS, str(metrics.get("numOutputRows", 0)))
    return props


def open_output(uri: str, catalog: str) -> TableOutput | None:
    ref = parse_table(uri)
    return TableOutput(uri, ref, catalog) if ref is not None else None
