"""The stream's options (:class:`StreamConfig`) and the counts it reports (:class:`StreamStats`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..runtime import PipelineRecipe

__all__ = ["StreamConfig", "StreamStats"]


@dataclasses.dataclass
class StreamConfig:
    """The stream's own options; the model and its pipeline are the embedded ``recipe``."""

    recipe: PipelineRecipe
    bootstrap_servers: str
    input_topic: str
    output_topic: str
    group_id: str = "lakeinfer"
    dead_letter_topic: str | None = None
    exactly_once: bool = False
    keep: list[str] = dataclasses.field(default_factory=list)
    max_batch_size: int = 10_000  # a backlog's model calls: 5,000 took 5% more core time a message
    max_wait_ms: float = 10.0
    metrics_interval_s: float = 10.0
    max_poll_interval_ms: int = 300_000
    transactional_id: str | None = None
    max_messages: int | None = None  # stop after this many (benchmarks); None: until SIGTERM
    idle_exit_s: float | None = None  # stop after this long without messages (benchmarks, tests)
    metrics_port: int | None = None  # serve Prometheus metrics on 127.0.0.1:PORT
    commit_interval_ms: float = 100.0  # while catching up a backlog: at most this long between commits
    ledger: str | None = None  # log every output to this table, exactly once (docs/ledger.md)
    ledger_wal: str | None = None  # where its rows wait (default .lakeinfer-ledger/<table>)
    ledger_interval: float = 5.0  # seconds between ledger commits
    ledger_fsync: bool = False  # fdatasync each micro-batch's WAL rows before its commit
    catalog: str | None = None  # the pyiceberg catalog of an iceberg: ledger


@dataclasses.dataclass
class StreamStats:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    batches: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)

    def line(self, lag: int | None) -> str:
        recent = self.latencies[-1000:]
        p50 = float(np.percentile(recent, 50)) * 1000 if recent else 0.0
        p99 = float(np.percentile(recent, 99)) * 1000 if recent else 0.0
        return (f"consumed={self.consumed} produced={self.produced} dead_lettered={self.dead_lettered} "
                f"lag={lag if lag is not None else '?'} batches={self.batches} "
                f"batch_ms_p50={p50:.1f} batch_ms_p99={p99:.1f}")
