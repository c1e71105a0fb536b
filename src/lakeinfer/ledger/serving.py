"""The ledger on the server: a recorder on the request path that writes each scored request's rows
to the WAL before the answer is sent (a 200 leaves only once its rows are on disk), and the
committer that the server's main process runs for all its workers.

A worker's readiness turns false, and its infer requests are refused with 503, while the WAL
cannot be written or while the committer has failed to write the table for longer than
``UNHEALTHY_INTERVALS`` intervals: the server answers nothing it cannot log.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..errors import ConfigError, LakeinferError
from ..models import model_digest
from .committer import Committer, read_status
from .rows import features_as_received, features_note, ledger_rows, wal_folder
from .table import LedgerTable
from .wal import WalWriter

if TYPE_CHECKING:
    from ..serve.config import ServeConfig
    from ..serve.envelope import Scored

__all__ = ["LedgerUnavailable", "ServeLedger", "start_committer"]

log = logging.getLogger("lakeinfer.ledger")
UNHEALTHY_INTERVALS = 3.0
MIN_BOUND_S = 1.0


class LedgerUnavailable(LakeinferError):
    """The ledger cannot take rows now: the request is refused rather than answered unlogged."""

    status = "unavailable"


def check(config: ServeConfig) -> None:
    """Refuse a ledger the server cannot keep."""
    if config.ledger is None:
        return
    if len(config.models) > 1:
        raise ConfigError("--ledger logs a server of one model (its features are the table's columns); "
                          "run one server per model, each with its ledger")
    LedgerTable(config.ledger, config.catalog)  # a table name that parses, its extra installed
    if config.ledger_interval <= 0:
        raise ConfigError(f"--ledger-interval must be positive, not {config.ledger_interval}")


def start_committer(config: ServeConfig) -> Committer:
    """The server's one committer (its main process), shipping what a previous run left first."""
    assert config.ledger is not None
    folder = wal_folder(config.ledger, config.ledger_wal)
    config.ledger_wal = folder  # the workers write where it reads
    return Committer(LedgerTable(config.ledger, config.catalog), folder, interval=config.ledger_interval).start()


class ServeLedger:
    """One worker's recorder (see ``Envelope.recorders``): rows to the WAL, ids for requests
    without one, the ledger's health for readiness and ``/metrics``."""

    assigns_ids = True

    def __init__(self, config: ServeConfig, schemas: Any) -> None:
        assert config.ledger is not None
        self.folder = wal_folder(config.ledger, config.ledger_wal)
        self.interval = config.ledger_interval
        self.bound = max(MIN_BOUND_S, UNHEALTHY_INTERVALS * config.ledger_interval)
        self.writer = WalWriter(self.folder, sync=config.ledger_fsync, build=self._rows)
        self.schemas = schemas  # model name -> its input schema (known once loaded)
        self.digests = {m.name: model_digest(m.recipe.model_path) for m in config.models}
        self._status: dict[str, Any] = {}
        self._read_at = 0.0
        self._wal_error: str | None = None
        self._notes: dict[str, dict[bytes, bytes]] = {}  # per model, the note of its features' schema on a frame

    def new_id(self) -> str:
        return uuid.uuid4().hex

    async def before_answer(self, scored: Scored) -> None:
        problem = self.problem()
        if problem is not None:
            raise LedgerUnavailable(f"the prediction ledger cannot take rows: {problem}")
        latency = time.perf_counter() - scored.started
        # the rows are built on the writer's thread, one frame for a whole group of requests
        entry = (scored.request_id or "", scored.model, time.time() - latency, latency * 1000.0, scored.inputs,
                 scored.outputs)
        try:
            await self.writer.append(entry)
        except OSError as exc:
            self._wal_error = f"cannot write the WAL in {self.folder}: {exc.strerror or exc}"
            log.error("lakeinfer: %s", self._wal_error)
            raise LedgerUnavailable(f"the prediction ledger cannot take rows: {self._wal_error}") from None
        self._wal_error = None

    def _rows(self, entries: list[tuple[str, str, float, float, pa.RecordBatch, pa.RecordBatch]]) -> pa.RecordBatch:
        """The ledger rows of a group of requests (all of one model: a ledger serves one)."""
        sizes = [e[5].num_rows for e in entries]
        model = entries[0][1]
        n = sum(sizes)
        schema = self.schemas(model)
        try:  # requests alike (the usual case): their inputs as sent, one batch; the committer
            # splits and types them as the model received them (ledger_table_rows), off the request path
            inputs = _one([e[4] for e in entries])
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # told apart by their types: decoded here, one by one
            inputs = _one([features_as_received(e[4], schema) for e in entries])
        identity = {
            "request_id": pa.array([e[0] for e, k in zip(entries, sizes, strict=True) for _ in range(k)], pa.string()),
            "row": pa.array([r for k in sizes for r in range(k)], pa.int32()),
            "model": pa.array([model] * n, pa.string()),
            "model_sha256": pa.array([self.digests.get(model, "")] * n, pa.string()),
            "received_at": pa.array([int(e[2] * 1e6) for e, k in zip(entries, sizes, strict=True) for _ in range(k)],
                                    pa.timestamp("us", tz="UTC")),
            "latency_ms": pa.array([e[3] for e, k in zip(entries, sizes, strict=True) for _ in range(k)], pa.float64()),
        }
        if model not in self._notes:
            self._notes[model] = features_note(schema)
        return ledger_rows(identity, inputs, _one([e[5] for e in entries])).replace_schema_metadata(self._notes[model])

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._read_at > 0.25:
            self._status = read_status(self.folder)
            self._read_at = now
        return self._status

    def problem(self) -> str | None:
        """Why the ledger cannot take rows now, else None."""
        if self._wal_error is not None:
            return self._wal_error
        status = self.status()
        failing = status.get("failing_since")
        if failing is not None and time.time() - failing > self.bound:
            return f"the table has not been written for {time.time() - failing:.0f} s ({status.get('error')})"
        updated = status.get("updated")
        if updated is not None and time.time() - updated > self.bound + 2 * self.interval + 30:
            return "its committer has stopped"
        return None

    def ready(self) -> bool:
        return self.problem() is None

    def metrics_text(self) -> bytes:
        status = self.status()
        last = status.get("last_commit")
        age = time.time() - last if last is not None else float("nan")
        lines = []
        for name, kind, text, value in (
                ("rows_logged", "gauge", "Rows the ledger table holds.", status.get("rows_committed", 0)),
                ("rows_pending", "gauge", "Rows read from the WAL and not yet committed to the ledger table.",
                 status.get("rows_pending", 0)),
                ("rows_written", "counter", "Rows this worker wrote to the WAL.", self.writer.rows),
                ("last_commit_age_seconds", "gauge", "Seconds since the last ledger commit (NaN: none yet).", age),
                ("ready", "gauge", "1 while the ledger takes rows.", 1 if self.ready() else 0)):
            full = f"lakeinfer_ledger_{name}"
            sample = f"{full}_total" if kind == "counter" else full
            lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}", f"{sample} {float(value)!r}"]
        return ("\n".join(lines) + "\n").encode()

    def close(self) -> None:
        self.writer.close()


def _one(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """Batches of one schema as one batch."""
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
