"""The stream's Kafka clients: their settings, and their log while the model loads."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .config import StreamConfig

__all__ = ["HeldLog", "await_metadata", "consumer_config", "lag", "names", "producer_config"]


def consumer_config(c: StreamConfig, logger: logging.Logger) -> dict[str, Any]:
    return {
        "bootstrap.servers": c.bootstrap_servers, "group.id": c.group_id, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
        "enable.partition.eof": False, "max.poll.interval.ms": c.max_poll_interval_ms,
        "session.timeout.ms": min(45_000, c.max_poll_interval_ms),
        "fetch.wait.max.ms": 10,  # an idle partition answers fast when a record arrives
        # librdkafka stops fetching a partition whose queue is full (queued.min.messages, 100k)
        # for this long: its default (1 s) lets a stream that scores 100k messages a second
        # empty the queue and wait, a third of a backlog's time with a model that does no work
        "fetch.queue.backoff.ms": 100,
        "logger": logger,
    }


def producer_config(c: StreamConfig, on_delivery: Callable[[Any, Any], None],
                    logger: logging.Logger) -> dict[str, Any]:
    producer = {"bootstrap.servers": c.bootstrap_servers, "enable.idempotence": True, "acks": "all",
                "linger.ms": 1, "compression.type": "lz4",
                # a Python call per delivered message costs as much as producing it: failures only
                "delivery.report.only.error": True, "on_delivery": on_delivery, "logger": logger}
    if c.exactly_once:
        # stable across restarts, so a restarted process fences its killed predecessor and aborts
        # its open transaction at once; two exactly-once processes of one group need distinct ids
        producer["transactional.id"] = c.transactional_id or f"lakeinfer-{c.group_id}-{c.input_topic}"
        producer["transaction.timeout.ms"] = 30_000
        # a transaction begun right after a commit finds the broker still writing the last one's
        # markers (CONCURRENT_TRANSACTIONS) and retries after this: librdkafka's default, 100 ms,
        # stalled one micro-batch in ten at 1,000 msg/s; Kafka's Java client waits 20 ms here
        producer["retry.backoff.ms"] = 20
    return producer


def await_metadata(producer: Any, topic: str, error: type[Exception], *, gave_up: Callable[[], bool]) -> None:
    """The producer's metadata for ``topic`` (up to 30 s), asked in short waits so that
    ``gave_up()`` (the model failed to load) ends it."""
    deadline = time.monotonic() + 30
    while not gave_up():
        try:
            producer.list_topics(topic, timeout=0.5)
            return
        except error:
            if time.monotonic() > deadline:
                raise


def lag(consumer: Any) -> int | None:
    """Messages in the consumer's partitions past its positions (None when the broker cannot say)."""
    try:
        total = 0
        for tp in consumer.position(consumer.assignment()):
            _, high = consumer.get_watermark_offsets(tp, timeout=1, cached=True)
            if tp.offset >= 0:
                total += max(0, high - tp.offset)
        return total
    except Exception:  # metrics must never stop the stream
        return None


def names(partitions: list[Any]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions)


class HeldLog(logging.Handler):
    """The clients' log (librdkafka's), held while the model loads, then passed to ``target``.

    The clients start before the model is known to load: if it fails, what they log meanwhile and
    while they close (a broker not reached, say) is dropped, and the load's error is the one line
    reported.
    """

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target
        self.logger = logging.Logger("lakeinfer.kafka", logging.DEBUG)  # the clients' own: not in the tree
        self.logger.addHandler(self)
        self._held: list[logging.LogRecord] | None = []
        self._muted = False

    def emit(self, record: logging.LogRecord) -> None:  # under the handler's lock
        if self._held is not None:
            self._held.append(record)
        elif not self._muted and self.target.isEnabledFor(record.levelno):
            self.target.handle(record)

    def settle(self, *, keep: bool) -> None:
        self.acquire()
        try:
            held, self._held = self._held or [], None
            self._muted = not keep
        finally:
            self.release()
        for record in held if keep else ():
            self.handle(record)
