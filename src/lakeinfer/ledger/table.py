"""The ledger table: an Iceberg table (a pyiceberg catalog) or a Delta table, created on first use.

Each commit appends rows and carries, in its properties (Iceberg snapshot summary, Delta
commitInfo), how far into each WAL segment (or each Kafka partition) the table holds: a
committer that restarts reads them back from the newest such commit, so a crash between writing
the table and remembering it never ships a row twice.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ..errors import ConfigError, OutputError, require
from ..io.tables import TableRef, load_catalog, load_iceberg, parse_table

__all__ = ["LEDGER_STATE", "LedgerTable", "ledger_ref"]

LEDGER_STATE = "lakeinfer.ledger.state"  # JSON: {"wal": {segment: offset}, "kafka": {topic:partition: offset}}
LEDGER_ROWS = "lakeinfer.ledger.rows"


def ledger_ref(uri: str) -> TableRef:
    """The table ``--ledger`` names (``iceberg:NS.TABLE`` or ``delta:PATH``)."""
    ref = parse_table(uri)
    if ref is None:
        raise ConfigError(f"--ledger '{uri}': name a table as iceberg:NAMESPACE.TABLE or delta:PATH")
    return ref


class LedgerTable:
    """One ledger table: its state (from its newest ledger commit), appends, and reads."""

    def __init__(self, uri: str, catalog: str | None = None) -> None:
        self.uri = uri
        self.ref = ledger_ref(uri)
        self.catalog_name = catalog or "default"
        self._catalog: Any = None
        if self.ref.kind == "delta":
            require("deltalake", "lake", "a Delta ledger table")

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            self._catalog = load_catalog(self.catalog_name)
        return self._catalog

    def _iceberg(self) -> Any:
        return load_iceberg(self.catalog, self.ref.name, self.catalog_name, "output")

    def _delta(self, version: int | None = None) -> Any:
        import deltalake

        try:
            return deltalake.DeltaTable(self.ref.name, version=version)
        except deltalake.exceptions.TableNotFoundError:
            return None

    def exists(self) -> bool:
        return (self._iceberg() if self.ref.kind == "iceberg" else self._delta()) is not None

    def state(self) -> dict[str, Any]:
        """The newest ledger commit's state (``{}`` before the first)."""
        for props in self._commits():
            raw = props.get(LEDGER_STATE)
            if raw:
                state: dict[str, Any] = json.loads(raw)
                return state
        return {}

    def _commits(self) -> list[dict[str, str]]:
        """Each commit's properties, newest first."""
        if self.ref.kind == "delta":
            table = self._delta()
            return [] if table is None else [{k: str(v) for k, v in h.items()} for h in table.history()]
        table = self._iceberg()
        commits = []
        snapshot = table.current_snapshot() if table is not None else None
        while snapshot is not None:
            commits.append(dict(snapshot.summary.additional_properties) if snapshot.summary is not None else {})
            parent = snapshot.parent_snapshot_id
            snapshot = table.snapshot_by_id(parent) if parent is not None else None
        return commits

    def append(self, rows: pa.Table, state: dict[str, Any]) -> None:
        """``rows`` in one commit that records ``state``."""
        properties = {LEDGER_STATE: json.dumps(state, sort_keys=True, separators=(",", ":")),
                      LEDGER_ROWS: str(rows.num_rows)}
        try:
            if self.ref.kind == "iceberg":
                table = self._iceberg()
                if table is None:
                    namespace = self.ref.name.rsplit(".", 1)[0]
                    self.catalog.create_namespace_if_not_exists(namespace)
                    table = self.catalog.create_table_if_not_exists(self.ref.name, schema=rows.schema)
                table.append(rows.cast(table.schema().as_arrow()), snapshot_properties=properties)
            else:
                import deltalake

                deltalake.write_deltalake(self.ref.name, rows, mode="append",
                                          commit_properties=deltalake.CommitProperties(custom_metadata=properties))
        except (OutputError, ConfigError):
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise OutputError(f"cannot commit to ledger table {self.uri}: {first}") from exc

    def read(self, *, where: str | None = None, snapshot: str | None = None) -> pa.Table:
        """The ledger's rows (``where``: a filter; ``snapshot``: an Iceberg snapshot id or Delta version)."""
        if self.ref.kind == "iceberg":
            table = self._iceberg()
            if table is None:
                raise ConfigError(f"ledger table {self.uri} does not exist")
            options: dict[str, Any] = {}
            if where:
                options["row_filter"] = where
            if snapshot is not None:
                options["snapshot_id"] = int(snapshot)
            try:
                return table.scan(**options).to_arrow()
            except ValueError as exc:
                raise ConfigError(f"ledger {self.uri}: {exc}") from None
        try:
            version = int(snapshot) if snapshot is not None else None
        except ValueError:
            raise ConfigError(f"--snapshot of a Delta table is a version number, not '{snapshot}'") from None
        delta = self._delta(version)
        if delta is None:
            raise ConfigError(f"ledger table {self.uri} does not exist")
        if not where:
            return delta.to_pyarrow_table()
        from deltalake import QueryBuilder

        try:
            reader = QueryBuilder().register("ledger", delta).execute(f"SELECT * FROM ledger WHERE {where}")
            return pa.table(reader.read_all())
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"bad --where '{where}': {first}") from None
