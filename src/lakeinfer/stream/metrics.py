"""The stream scorer's Prometheus metrics, served on ``--metrics-port`` at 127.0.0.1."""

from __future__ import annotations

import errno

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ..errors import ConfigError

BATCH_SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class StreamMetrics:
    """Messages consumed, produced and dead-lettered, seconds per batch and consumer lag."""

    def __init__(self, port: int, *, host: str = "127.0.0.1") -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"stream: metrics port must be from 0 to 65535, not {port}")
        # a registry of its own: the process's default one may hold an embedding app's metrics
        self.registry = CollectorRegistry()
        self._consumed = Counter("lakeinfer_stream_consumed", "Messages read from the input topic.",
                                 registry=self.registry)
        self._produced = Counter("lakeinfer_stream_produced", "Predictions written to the output topic.",
                                 registry=self.registry)
        self._dead_lettered = Counter("lakeinfer_stream_dead_lettered",
                                      "Messages that could not be scored (sent to the dead-letter topic or skipped).",
                                      registry=self.registry)
        self._batch_seconds = Histogram("lakeinfer_stream_batch_seconds",
                                        "Seconds from a batch's arrival to its commit.",
                                        buckets=BATCH_SECONDS_BUCKETS, registry=self.registry)
        self._lag = Gauge("lakeinfer_stream_lag", "Messages in the assigned partitions not yet consumed.",
                          registry=self.registry)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(f"stream: metrics port {port} on {host} {reason}") from None

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def batch(self, *, consumed: int, produced: int, dead_lettered: int, seconds: float) -> None:
        self._consumed.inc(consumed)
        self._produced.inc(produced)
        self._dead_lettered.inc(dead_lettered)
        self._batch_seconds.observe(seconds)

    def lag(self, messages: int | None) -> None:
        if messages is not None:  # unknown for now: the last known value stands
            self._lag.set(messages)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()  # shutdown alone keeps the port bound
        self._thread.join()
