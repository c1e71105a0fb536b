"""KafkaScorer: Kafka in, predictions out, at-least-once by default and exactly-once on request.

One loop: consume up to ``max_batch_size`` messages (or what came within ``max_wait_ms``) and hand
them to worker threads: one parses, the model's (one per core where it takes concurrent calls) score
the good ones in one call and write the outputs (``scoring.MessageScorer``); meanwhile the loop
consumes the next micro-batches and produces the outputs of the one before, with the dead letters.
A long model call runs with the consumer paused but polling: it never overruns max.poll.interval.ms.

Commits: after the outputs are acknowledged (at-least-once), or with the outputs in one
transaction (exactly-once). At the end of the backlog every micro-batch is committed at once;
while a backlog is caught up, one commit covers the micro-batches of ``commit_interval_ms``
(a commit is a few broker round trips, dearer than producing a thousand messages). Before a
rebalance takes partitions away, everything read from them is produced and committed.

Start-up: the clients connect, the transactional producer registers and the consumer joins its
group on the parse thread (idle until the loop starts) while the model loads on this one; until
the partitions are assigned it polls, so the first fetch is under way when the loop starts.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..cpu import available_cores, own_threads
from ..errors import ConfigError, LakeinferError, require
from ..runtime import ModelRuntime
from . import clients, codec
from .config import StreamConfig, StreamStats
from .heap import frozen_heap
from .scoring import MessageScorer, Outcome

if TYPE_CHECKING:
    from .metrics import StreamMetrics

log = logging.getLogger("lakeinfer.stream")
MODEL_THREADS = 8  # at most: each holds a micro-batch consumed and not yet committed


@dataclasses.dataclass(eq=False)
class _InFlight:
    """A consumed micro-batch: on the worker thread until its outcome is produced."""

    messages: list[Any]
    outcome: Future[Outcome]
    arrived: float
    delivered: bool = False


class KafkaScorer:
    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.kafka = require("confluent_kafka", "kafka", "lakeinfer stream")
        if config.max_batch_size < 1 or config.max_wait_ms < 0:
            raise ConfigError("stream: max_batch_size must be at least 1 and max_wait_ms not negative")
        if not 0 <= config.commit_interval_ms <= 10_000:
            # the broker aborts a transaction left open for transaction.timeout.ms (30 s here)
            raise ConfigError("stream: commit_interval_ms must be from 0 to 10000")
        self.stats = StreamStats()
        self._stop = threading.Event()
        self._consumer: Any = None
        self._producer: Any = None
        self._delivery_errors: list[str] = []
        self._in_flight: deque[_InFlight] = deque()
        self._taken = 0  # messages consumed, scored or not
        # delivered, not yet committed: the next offset per partition, the batches' sizes and arrivals
        self._offsets: dict[tuple[str, int], int] = {}
        self._uncommitted: list[tuple[float, int, int, int]] = []
        self._first_uncommitted = 0.0
        self._in_transaction = False
        self._revoking = False
        self._failed = False
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="lakeinfer-parse")
        self.metrics: StreamMetrics | None = None
        # first: a port that is taken fails here, before anything else was started
        if config.metrics_port is not None:
            from .metrics import StreamMetrics

            self.metrics = StreamMetrics(config.metrics_port)
        # the clients connect and the consumer joins its group while the model loads (below): a
        # transactional producer's start alone is a few round trips, the join a few more
        self._early: list[Any] = []  # what the consumer returned while it waited for its partitions
        self._loaded = threading.Event()
        self._load_failed = False
        self._assigned = threading.Event()
        self._client_log = clients.HeldLog(log)
        self._connected = self._parser.submit(self._connect)  # the parse thread is idle until the loop
        try:
            require("polars", "kafka", "lakeinfer stream")  # reads the messages (codec): missing, it fails here
            # as batch shares out the cores: a runtime that takes concurrent calls (ONNX) runs single-threaded,
            # one micro-batch per core (less CPU than one call over every core, and batch's answers bit for
            # bit); any other runs on its own threads, one call at a time
            concurrent = config.recipe.concurrent_calls
            self._model_threads = min(available_cores(), MODEL_THREADS) if concurrent else 1
            self.runtime = ModelRuntime(config.recipe, threads=1 if concurrent else own_threads())
            self._scorer = MessageScorer(self.runtime, config.keep)
            self.ledger: Any = None  # with --ledger, its WAL writer (ledger/streaming.py)
            if config.ledger is not None:
                from ..ledger.streaming import StreamLedger

                self.ledger = self._scorer.ledger = StreamLedger(config.ledger, config.ledger_wal, self.runtime,
                                                                 config.keep, fsync=config.ledger_fsync)
            self._executor = ThreadPoolExecutor(self._model_threads, thread_name_prefix="lakeinfer-model")
        except BaseException:
            self._load_failed = True
            self._loaded.set()
            self._client_log.settle(keep=False)  # the load's error is the one to report
            self._close(quiet=True)
            raise
        self._client_log.settle(keep=True)
        self._loaded.set()

    # -- set-up -------------------------------------------------------------------------------
    def _connect(self) -> None:
        c = self.config
        self._consumer = self.kafka.Consumer(clients.consumer_config(c, self._client_log.logger))
        producer = clients.producer_config(c, self._delivered, self._client_log.logger)
        self._producer = self.kafka.Producer(producer)
        self._consumer.subscribe([c.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        if c.exactly_once:
            # init_transactions asks a connected broker for the coordinator; with none (the bootstrap
            # connection is dropped once the first metadata names the brokers) it waits for librdkafka's
            # next query, 500 ms later: one start in three here. The second metadata request returns
            # once a named broker is connected
            for _ in range(2):
                clients.await_metadata(self._producer, c.output_topic, self.kafka.KafkaException,
                                       gave_up=lambda: self._load_failed)
            if self._load_failed:
                return
            self._producer.init_transactions(30)
        # the group's join goes on in the background; its assignment, and the first fetch, need a
        # poll: polled here until the partitions are ours or the model is loaded
        while not self._assigned.is_set() and not self._loaded.is_set():
            message = self._consumer.poll(0.01)
            if message is not None:
                self._early.append(message)

    def stop(self, *_: Any) -> None:
        """Finish the batches in hand, commit them and leave the group (SIGTERM, SIGINT)."""
        self._stop.set()

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> StreamStats:
        try:
            self._connected.result()
        except BaseException:
            self._close()
            raise
        with frozen_heap():  # the model and the clients, out of every full collection's walk
            return self._run()

    def _run(self) -> StreamStats:
        c = self.config
        last_report = last_message = time.monotonic()
        try:
            while not self._stop.is_set():
                messages = self._consumer.consume(num_messages=max(1, c.max_batch_size - len(self._early)),
                                                  timeout=max(c.max_wait_ms, 1) / 1000)
                if self._early:
                    messages, self._early = self._early + messages, []
                full = len(messages) >= c.max_batch_size  # a backlog: more is waiting
                if any(m.error() is not None for m in messages):
                    messages = [m for m in messages if not self._broker_error(m)]
                now = time.monotonic()
                if messages:
                    self._taken += len(messages)
                    # a backlog's batches are parsed on a thread of their own, to overlap with scoring;
                    # a lone batch is parsed by the model's thread, one thread hand-off fewer to wait for
                    parsed = self._parser.submit(self._scorer.parse, messages) if full else messages
                    self._in_flight.append(_InFlight(messages, self._executor.submit(self._scorer.score, parsed),
                                                     time.perf_counter()))
                    last_message = now
                # in a backlog, micro-batch i is produced while the next ones are scored and parsed;
                # at its end there is nothing to overlap with, so what is in hand goes out at once
                while len(self._in_flight) > (max(2, self._model_threads) if full else 0):
                    self._deliver_next()
                if self._uncommitted and (not full or now - self._first_uncommitted >= c.commit_interval_ms / 1000):
                    self._commit()
                if not messages and c.idle_exit_s is not None and now - last_message > c.idle_exit_s:
                    break
                if c.max_messages is not None and self._taken >= c.max_messages:
                    break
                if now - last_report >= c.metrics_interval_s:
                    log.warning("lakeinfer stream: %s", self.stats.line(clients.lag(self._consumer)))
                    last_report = now
            self._drain()
        except BaseException:
            self._abandon()
            raise
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

    def _drain(self) -> None:
        """Produce and commit every batch in hand."""
        while self._in_flight:
            self._deliver_next()
        if self._uncommitted:
            self._commit()

    def _abandon(self) -> None:
        """After a failure: nothing more is committed; an open transaction is aborted."""
        self._failed = True
        self._early.clear()
        self._in_flight.clear()
        self._offsets.clear()
        self._uncommitted.clear()
        if self._in_transaction:
            self._in_transaction = False
            try:
                self._producer.abort_transaction(30)
            except Exception as exc:  # the failure being raised matters more; a restart fences it anyway
                log.warning("lakeinfer stream: could not abort the open transaction: %s", exc)

    # -- rebalances ---------------------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("lakeinfer stream: partitions assigned: %s", clients.names(partitions))
        self._assigned.set()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # a commit may cover several micro-batches: what was read from these partitions is produced
        # and committed before another member starts from their committed offsets. What the start
        # polled and no micro-batch holds yet is read again from there, by whoever owns them
        self._early.clear()
        if self._failed:
            return
        self._revoking = True
        try:
            self._drain()
        finally:
            self._revoking = False

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # another member may own them already: what is in hand is dropped, uncommitted (an open
        # transaction aborted), and read again from the committed offsets by whoever owns them
        log.warning("lakeinfer stream: partitions lost: %s", clients.names(partitions))
        self._abandon()
        self._failed = False

    # -- a micro-batch's outputs --------------------------------------------------------------
    def _wait(self, future: Future[Any]) -> Any:
        """The worker's result; a long call keeps the group membership alive: pause, poll, resume.

        Pausing drops the consumer's prefetched messages, so it is done only for calls that take
        a good share of ``max.poll.interval.ms``, never for the usual quick batch.
        """
        grace = min(1.0, self.config.max_poll_interval_ms / 10_000)
        try:
            return future.result(timeout=grace)
        except TimeoutError:
            if self._revoking:  # inside a rebalance callback: no polling from there
                return future.result()
        assignment = self._consumer.assignment()
        self._consumer.pause(assignment)
        try:
            while not future.done():
                self._consumer.poll(0.05)  # paused: returns nothing, but counts as a poll
                self._producer.poll(0)
            return future.result()
        finally:
            self._consumer.resume(assignment)

    def _deliver_next(self) -> None:
        batch = self._in_flight[0]
        outcome: Outcome = self._wait(batch.outcome)
        if batch.delivered or not self._in_flight or self._in_flight[0] is not batch:
            return  # a rebalance during the wait delivered it (or dropped it)
        batch.delivered = True
        self._in_flight.popleft()
        c, messages, producer = self.config, batch.messages, self._producer
        if c.exactly_once and not self._in_transaction:
            producer.begin_transaction()
            self._in_transaction = True
        topic = c.output_topic
        for position, value in zip(outcome.good, outcome.encoded, strict=True):
            try:
                producer.produce(topic, value, messages[position].key())
            except BufferError:
                self._produce(topic, messages[position].key(), value)
        for position, reason in sorted(outcome.bad.items()):
            m = messages[position]
            if c.dead_letter_topic is None:
                log.warning("lakeinfer stream: skipping %s[%d]@%d: %s (no --dead-letter-topic)",
                            m.topic(), m.partition(), m.offset(), reason)
                continue
            self._produce(c.dead_letter_topic, m.key(), codec.dead_letter(m.value(), reason, m.topic(),
                                                                          m.partition(), m.offset()),
                          headers=[("lakeinfer.error", reason.encode())])
        if self.ledger is not None:  # in the WAL before the commit; shipped once Kafka has it
            self.ledger.log(messages, outcome.good, outcome.rows, batch.arrived)
        self._next_offsets(messages)
        if not self._uncommitted:
            self._first_uncommitted = time.monotonic()
        self._uncommitted.append((batch.arrived, len(messages), len(outcome.good), len(outcome.bad)))

    def _produce(self, topic: str, key: Any, value: bytes, headers: Any = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError:  # the producer's queue is full: let it drain
                self._producer.poll(0.1)

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._delivery_errors.append(f"{message.topic()}: {error.str() if hasattr(error, 'str') else error}")

    def _next_offsets(self, messages: Sequence[Any]) -> None:
        # a partition's messages come in order: its last one is its newest
        seen: set[tuple[str, int]] = set()
        for m in reversed(messages):
            key = (m.topic(), m.partition())
            if key not in seen:
                seen.add(key)
                self._offsets[key] = m.offset() + 1

    def _commit(self) -> None:
        c = self.config
        offsets = [self.kafka.TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
        if c.exactly_once:
            if not self._in_transaction:
                self._producer.begin_transaction()
                self._in_transaction = True
            self._producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 30)
            self._producer.commit_transaction(60)
            self._in_transaction = False
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
        self._offsets.clear()
        done = time.perf_counter()
        if self.metrics is not None:
            self.metrics.lag(clients.lag(self._consumer))  # first: a scrape that sees this batch counted sees its lag
        for arrived, consumed, produced, dead_lettered in self._uncommitted:
            self.stats.consumed += consumed
            self.stats.produced += produced
            self.stats.dead_lettered += dead_lettered
            self.stats.batches += 1
            self.stats.latencies.append(done - arrived)
            if self.metrics is not None:
                self.metrics.batch(consumed=consumed, produced=produced, dead_lettered=dead_lettered,
                                   seconds=done - arrived)
        del self.stats.latencies[:-10_000]
        self._uncommitted.clear()

    def _close(self, *, quiet: bool = False) -> None:
        try:
            self._connected.exception()  # the clients it made are closed here
            if self._producer is not None:
                self._producer.flush(30)
        finally:
            if self._consumer is not None:
                self._consumer.close()  # leaves the group at once; everything in hand was committed
            self._parser.shutdown(wait=True)
            if hasattr(self, "_executor"):  # not when the model failed to load
                self._executor.shutdown(wait=True)
            if self.metrics is not None:
                self.metrics.close()
        if not quiet:
            log.warning("lakeinfer stream: stopped: %s", self.stats.line(None))


def run(config: StreamConfig) -> StreamStats:
    scorer = KafkaScorer(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, scorer.stop)
    logging.basicConfig(level=os.environ.get("LAKEINFER_LOG", "WARNING"), format="%(message)s")
    if config.ledger is not None:  # with its committer beside the loop
        from ..ledger.streaming import run_logged

        return run_logged(scorer, config)
    return scorer.run()
