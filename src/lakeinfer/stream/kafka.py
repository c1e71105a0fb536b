"""KafkaScorer: Kafka in, predictions out, at-least-once by default and exactly-once on request.

One loop: consume up to ``max_batch_size`` messages (or what came within ``max_wait_ms``), set the
bad ones aside for the dead-letter topic, score the rest in one model call on a worker thread
while the consumer is paused but keeps polling (so a slow model never overruns
``max.poll.interval.ms``), produce, then commit: after the outputs are acknowledged
(at-least-once), or with the outputs in one transaction (exactly-once).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, InputError, LakeinferError, require
from ..runtime import ModelRuntime, PipelineRecipe, Scored
from ..runtime.batcher import score_group
from . import codec
from .metrics import StreamMetrics

log = logging.getLogger("lakeinfer.stream")


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
    max_batch_size: int = 1000
    max_wait_ms: float = 10.0
    metrics_interval_s: float = 10.0
    max_poll_interval_ms: int = 300_000
    transactional_id: str | None = None
    max_messages: int | None = None  # stop after this many (benchmarks); None: until SIGTERM
    idle_exit_s: float | None = None  # stop after this long without messages (benchmarks, tests)
    metrics_port: int | None = None  # serve Prometheus metrics on 127.0.0.1:PORT


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


class KafkaScorer:
    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.kafka = require("confluent_kafka", "kafka", "lakeinfer stream")
        if config.max_batch_size < 1 or config.max_wait_ms < 0:
            raise ConfigError("stream: max_batch_size must be at least 1 and max_wait_ms not negative")
        self.runtime = ModelRuntime(config.recipe)
        # a pipeline that is the model alone reads only its feature columns: checked per message
        self.features = list(self.runtime.input_columns) if self.runtime.model_only else None
        self._schema = self.runtime.input_schema()
        self._text = frozenset(f.name for f in self._schema if pa.types.is_string(f.type))
        self.stats = StreamStats()
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lakeinfer-model")
        self._consumer: Any = None
        self._producer: Any = None
        self._delivery_errors: list[str] = []
        # last: a port that is taken fails here, before anything else was started
        self.metrics = StreamMetrics(config.metrics_port) if config.metrics_port is not None else None

    # -- set-up -------------------------------------------------------------------------------
    def _connect(self) -> None:
        c = self.config
        self._consumer = self.kafka.Consumer({
            "bootstrap.servers": c.bootstrap_servers, "group.id": c.group_id, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            "enable.partition.eof": False, "max.poll.interval.ms": c.max_poll_interval_ms,
            "session.timeout.ms": min(45_000, c.max_poll_interval_ms),
            "fetch.wait.max.ms": 10,  # an idle partition answers fast when a record arrives
        })
        producer = {"bootstrap.servers": c.bootstrap_servers, "enable.idempotence": True, "acks": "all",
                    "linger.ms": 1, "compression.type": "lz4"}
        if c.exactly_once:
            # stable across restarts, so a restarted process fences its killed predecessor and aborts
            # its open transaction at once; two exactly-once processes of one group need distinct ids
            producer["transactional.id"] = c.transactional_id or f"lakeinfer-{c.group_id}-{c.input_topic}"
            producer["transaction.timeout.ms"] = 30_000
        self._producer = self.kafka.Producer(producer)
        if c.exactly_once:
            self._producer.init_transactions(30)
        self._consumer.subscribe([c.input_topic])

    def stop(self, *_: Any) -> None:
        """Finish the batch in hand, commit it and leave the group (SIGTERM, SIGINT)."""
        self._stop.set()

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> StreamStats:
        self._connect()
        last_report = last_message = time.monotonic()
        try:
            while not self._stop.is_set():
                messages = self._consumer.consume(num_messages=self.config.max_batch_size,
                                                  timeout=max(self.config.max_wait_ms, 1) / 1000)
                messages = [m for m in messages if not self._broker_error(m)]
                now = time.monotonic()
                if messages:
                    self._process(messages)
                    last_message = now
                elif self.config.idle_exit_s is not None and now - last_message > self.config.idle_exit_s:
                    break
                if self.config.max_messages is not None and self.stats.consumed >= self.config.max_messages:
                    break
                if now - last_report >= self.config.metrics_interval_s:
                    log.warning("lakeinfer stream: %s", self.stats.line(self._lag()))
                    last_report = now
        finally:
            self._close()
        return self.stats

    def _broker_error(self, message: Any) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.fatal():
            raise LakeinferError(f"Kafka: {error.str()}")
        log.warning("lakeinfer stream: Kafka: %s", error.str())
        return True

    def _process(self, messages: Sequence[Any]) -> None:
        start = time.perf_counter()
        values = [m.value() for m in messages]
        done = self._process_columns(messages, values) if self.features is not None else None
        if done is None:
            done = self._process_records(messages, values)
        good, encoded, bad = done
        self._deliver(messages, good, encoded, bad)
        self.stats.consumed += len(messages)
        self.stats.produced += len(encoded)
        self.stats.dead_lettered += len(bad)
        self.stats.batches += 1
        self.stats.latencies.append(time.perf_counter() - start)
        del self.stats.latencies[:-10_000]
        if self.metrics is not None:
            self.metrics.lag(self._lag())  # first: a scrape that sees this batch counted sees its lag
            self.metrics.batch(consumed=len(messages), produced=len(encoded), dead_lettered=len(bad),
                               seconds=self.stats.latencies[-1])

    def _process_columns(self, messages: Sequence[Any], values: list[Any]
                         ) -> tuple[list[int], list[bytes], dict[int, str]] | None:
        """The fast path: Arrow parses the whole batch, one model call, rows encoded from columns."""
        assert self.features is not None
        parsed = codec.decode_columns(values, self._schema, keep=self.config.keep)
        if parsed is None:
            return None
        table, bad = parsed
        good = [i for i in range(len(values)) if i not in bad]
        if bad:
            table = table.take(pa.array(good, pa.int64()))
        if not good:
            return [], [], bad
        features = table.select(self.features).combine_chunks().to_batches()[0]
        (result,) = self._wait(self._executor.submit(score_group, self.runtime.score, [features]))
        if isinstance(result, BaseException):
            return None  # a record the model refuses as a whole: the record path finds which
        encoded = codec.encode_table(table, result.outputs, self.config.keep)
        if result.errors is not None:  # bad values (the missing-value rule): dead letters
            for i, reason in enumerate(result.errors):
                if reason is not None:
                    bad[good[i]] = reason
            encoded = [e for e, reason in zip(encoded, result.errors, strict=True) if reason is None]
            good = [g for g, reason in zip(good, result.errors, strict=True) if reason is None]
        return good, encoded, bad

    def _process_records(self, messages: Sequence[Any], values: list[Any]
                         ) -> tuple[list[int], list[bytes], dict[int, str]]:
        """Message by message: exact reasons for every bad one."""
        records, good, bad = codec.decode(values, self.features, self._text)
        outputs: list[dict[str, Any]] = []
        if records:
            outputs, failed = self._score(records)
            for position, reason in failed.items():
                bad[good[position]] = reason
            keep = [i for i in range(len(records)) if i not in failed]
            records, good = [records[i] for i in keep], [good[i] for i in keep]
        return good, codec.encode(records, outputs, self.config.keep), bad

    def _score(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, str]]:
        """Outputs of the good records (in order) and {position: reason} of records the model refused."""
        try:
            batch = self.runtime.records(records, keep=self.config.keep)
        except InputError:  # records whose fields do not line up: one by one, each with its reason
            return self._score_each(records)
        (result,) = self._wait(self._executor.submit(score_group, self.runtime.score, [batch]))
        if isinstance(result, BaseException):
            return self._score_each(records)  # one record failed the merged call: find which
        return self._split(result)

    def _score_each(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, str]]:
        outputs: list[dict[str, Any]] = []
        failed: dict[int, str] = {}
        batches: list[pa.RecordBatch | None] = []
        for i, record in enumerate(records):
            try:
                batches.append(self.runtime.records([record], keep=self.config.keep))
            except InputError as exc:
                failed[i] = str(exc)
                batches.append(None)
        todo = [b for b in batches if b is not None]
        results = iter(self._wait(self._executor.submit(score_group, self.runtime.score, todo)) if todo else [])
        for i, batch in enumerate(batches):
            if batch is None:
                continue
            result = next(results)
            if isinstance(result, BaseException):
                # a record no rule foresaw goes to the dead letters with its reason; the stream goes on
                failed[i] = str(result) if isinstance(result, LakeinferError) else (
                    f"internal error: {type(result).__name__}: {result}")
            elif result.errors is not None:
                failed[i] = str(result.errors[0])
            else:
                outputs.extend(result.outputs.to_pylist())
        return outputs, failed

    @staticmethod
    def _split(result: Scored) -> tuple[list[dict[str, Any]], dict[int, str]]:
        rows = result.outputs.to_pylist()
        if result.errors is None:
            return rows, {}
        failed = {i: str(e) for i, e in enumerate(result.errors) if e is not None}
        return [r for r, e in zip(rows, result.errors, strict=True) if e is None], failed

    def _wait(self, future: Future[Any]) -> Any:
        """The model's result; a long call keeps the group membership alive: pause, poll, resume.

        Pausing drops the consumer's prefetched messages, so it is done only for calls that take
        a good share of ``max.poll.interval.ms``, never for the usual quick batch.
        """
        grace = min(1.0, self.config.max_poll_interval_ms / 10_000)
        try:
            return future.result(timeout=grace)
        except TimeoutError:
            pass
        assignment = self._consumer.assignment()
        self._consumer.pause(assignment)
        try:
            while not future.done():
                self._consumer.poll(0.05)  # paused: returns nothing, but counts as a poll
                self._producer.poll(0)
            return future.result()
        finally:
            self._consumer.resume(assignment)

    def _deliver(self, messages: Sequence[Any], good: list[int], encoded: list[bytes], bad: dict[int, str]) -> None:
        c = self.config
        if c.exactly_once:
            self._producer.begin_transaction()
        for position, value in zip(good, encoded, strict=True):
            self._produce(c.output_topic, messages[position].key(), value)
        for position, reason in sorted(bad.items()):
            m = messages[position]
            if c.dead_letter_topic is None:
                log.warning("lakeinfer stream: skipping %s[%d]@%d: %s (no --dead-letter-topic)",
                            m.topic(), m.partition(), m.offset(), reason)
                continue
            self._produce(c.dead_letter_topic, m.key(), codec.dead_letter(m.value(), reason, m.topic(),
                                                                          m.partition(), m.offset()),
                          headers=[("lakeinfer.error", reason.encode())])
        offsets = self._next_offsets(messages)
        if c.exactly_once:
            self._producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 30)
            self._producer.commit_transaction(60)
        else:
            remaining = self._producer.flush(60)
            if remaining:
                raise LakeinferError(f"Kafka did not acknowledge {remaining} outputs within 60 s; offsets not committed")
            if self._delivery_errors:
                # at-least-once: a batch whose outputs were not all delivered is not committed
                first, count = self._delivery_errors[0], len(self._delivery_errors)
                self._delivery_errors.clear()
                raise LakeinferError(f"Kafka refused {count} outputs ({first}); offsets not committed, "
                                     "so the batch is consumed again on restart")
            self._consumer.commit(offsets=offsets, asynchronous=False)

    def _produce(self, topic: str, key: Any, value: bytes, headers: Any = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._delivered)
                return
            except BufferError:  # the producer's queue is full: let it drain
                self._producer.poll(0.1)

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._delivery_errors.append(f"{message.topic()}: {error.str() if hasattr(error, 'str') else error}")

    def _next_offsets(self, messages: Sequence[Any]) -> list[Any]:
        latest: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            latest[key] = max(latest.get(key, -1), m.offset())
        return [self.kafka.TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]

    def _lag(self) -> int | None:
        try:
            total = 0
            for tp in self._consumer.position(self._consumer.assignment()):
                _, high = self._consumer.get_watermark_offsets(tp, timeout=1, cached=True)
                if tp.offset >= 0:
                    total += max(0, high - tp.offset)
            return total
        except Exception:  # metrics must never stop the stream
            return None

    def _close(self) -> None:
        try:
            if self._producer is not None:
                self._producer.flush(30)
        finally:
            if self._consumer is not None:
                self._consumer.close()  # commits nothing more; leaves the group at once
            self._executor.shutdown(wait=True)
            if self.metrics is not None:
                self.metrics.close()
        log.warning("lakeinfer stream: stopped: %s", self.stats.line(None))


def run(config: StreamConfig) -> StreamStats:
    scorer = KafkaScorer(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, scorer.stop)
    logging.basicConfig(level=os.environ.get("LAKEINFER_LOG", "WARNING"), format="%(message)s")
    return scorer.run()
