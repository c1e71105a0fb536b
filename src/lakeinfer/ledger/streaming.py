"""The ledger on the Kafka stream: each micro-batch's rows go to the WAL when its outputs are
produced (before their commit), and the committer ships a row only once Kafka has committed the
consumer group's offset past it, at most once per (topic, partition, offset).

A micro-batch whose transaction was aborted (a kill -9, a lost partition) is consumed and scored
again after the restart: its first rows in the WAL wait until the offsets are committed, and the
table's record of the next offset per partition keeps the second copy out. So with
``--exactly-once`` the ledger holds exactly the records whose outputs Kafka committed (as Kafka
Connect's Iceberg sink keeps its consumer offsets in the snapshot).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..models import model_digest
from ..runtime import ModelRuntime
from .committer import Committer
from .rows import features_as_received, ledger_rows, repeated, wal_folder
from .table import LedgerTable
from .wal import WalWriter

__all__ = ["KafkaSelect", "StreamLedger", "run_logged", "start_stream_committer"]

Committed = Callable[[Sequence[tuple[str, int]]], dict[tuple[str, int], int]]


class StreamLedger:
    """The stream's writer: one WAL frame per delivered micro-batch."""

    def __init__(self, ledger: str, wal: str | None, runtime: ModelRuntime, keep: Sequence[str], *,
                 fsync: bool = False) -> None:
        self.writer = WalWriter(wal_folder(ledger, wal), sync=fsync)
        self.schema = runtime.input_schema()
        self.keep = list(keep)
        self.model = runtime.recipe.model_path
        self.digest = model_digest(runtime.recipe.model_path)

    def log(self, messages: Sequence[Any], good: Sequence[int], rows: pa.RecordBatch | None, arrived: float) -> None:
        """The good messages' rows (``rows``: their features and outputs, in the order of ``good``)."""
        if rows is None or not good:
            return
        n = len(good)
        chosen = [messages[i] for i in good]
        latency = (time.perf_counter() - arrived) * 1000.0
        stamps = [m.timestamp()[1] for m in chosen]
        identity = {
            "topic": pa.array([m.topic() for m in chosen], pa.string()),
            "partition": pa.array([m.partition() for m in chosen], pa.int32()),
            "offset": pa.array([m.offset() for m in chosen], pa.int64()),
            "model": repeated(self.model.rstrip("/").rsplit("/", 1)[-1], n),
            "model_sha256": repeated(self.digest, n),
            "received_at": pa.array(np.array(stamps, dtype=np.int64) * 1000).cast(pa.timestamp("us", tz="UTC")),
            "latency_ms": pa.array(np.full(n, latency, dtype=np.float64)),
        }
        names = set(self.schema.names) | set(self.keep)
        features = pa.RecordBatch.from_arrays(
            [rows.column(c) for c in rows.schema.names if c in names],
            names=[c for c in rows.schema.names if c in names])
        outputs = rows.select([c for c in rows.schema.names if c not in names])
        self.writer.append_now(ledger_rows(identity, features_as_received(features, self.schema), outputs, self.keep))

    def close(self) -> None:
        self.writer.close()


class KafkaSelect:
    """The committer's choice for the stream: rows Kafka has committed, each (topic, partition,
    offset) once; a frame with a row not yet committed waits, and the frames after it too."""

    def __init__(self, committed: Committed) -> None:
        self.committed = committed
        self._next: dict[str, int] = {}
        self._known: dict[tuple[str, int], int] = {}

    def begin(self, state: dict[str, Any]) -> None:
        self._next = {k: int(v) for k, v in state.get("kafka", {}).items()}
        self._known = {}

    def take(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        topics = batch.column("topic").to_pylist()
        partitions = batch.column("partition").to_pylist()
        offsets = batch.column("offset").to_pylist()
        pairs = sorted(set(zip(topics, partitions, strict=True)))
        unknown = [p for p in pairs if p not in self._known]
        if unknown:
            self._known.update(self.committed(unknown))
        keep = []
        for i, (t, p, o) in enumerate(zip(topics, partitions, offsets, strict=True)):
            if o < self._next.get(f"{t}:{p}", 0):
                continue  # in the table already (a micro-batch scored again after an abort)
            if o >= self._known.get((t, p), 0):
                return None  # its outputs' commit is not (yet) in Kafka
            keep.append(i)
        for i in keep:
            key = f"{topics[i]}:{partitions[i]}"
            self._next[key] = max(self._next.get(key, 0), offsets[i] + 1)
        return batch if len(keep) == batch.num_rows else batch.filter(
            pc.is_in(pa.array(range(batch.num_rows)), pa.array(keep, pa.int64())))

    def end(self) -> dict[str, Any]:
        return {"kafka": dict(self._next)}


def kafka_committed(bootstrap_servers: str, group_id: str) -> Committed:
    """The consumer group's committed offsets, read by a consumer that joins no group."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group_id,
                         "enable.auto.commit": False})

    def committed(pairs: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        found = consumer.committed([TopicPartition(t, p) for t, p in pairs], timeout=10)
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in found}

    return committed


def start_stream_committer(ledger: str, wal: str | None, *, catalog: str | None, interval: float,
                           bootstrap_servers: str, group_id: str) -> Committer:
    select = KafkaSelect(kafka_committed(bootstrap_servers, group_id))
    return Committer(LedgerTable(ledger, catalog), wal_folder(ledger, wal), interval=interval,
                     select=select).start()


def run_logged(scorer: Any, config: Any) -> Any:
    """Run a KafkaScorer (``config``: its StreamConfig) with the ledger's committer beside it."""
    committer = start_stream_committer(config.ledger, config.ledger_wal, catalog=config.catalog,
                                       interval=config.ledger_interval,
                                       bootstrap_servers=config.bootstrap_servers, group_id=config.group_id)
    try:
        return scorer.run()
    finally:
        scorer.ledger.close()
        committer.close()
