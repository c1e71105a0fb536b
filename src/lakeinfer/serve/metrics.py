"""The server's Prometheus metrics, through prometheus_client.

Under ``lakeinfer serve`` every worker process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by the server before it starts them), and a scrape, whichever
worker answers it, reads all the files: one scrape totals every worker. An app created without
that variable (in-process use, tests) keeps its values in memory, in a registry of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def multiprocess_dir() -> str | None:
    """The shared folder, when this process writes its values there.

    prometheus_client picks file-backed values once, when first imported: a variable set after
    that would make the scrape read files nobody writes, so both must agree.
    """
    folder = os.environ.get(MULTIPROC_ENV)
    return folder if folder and getattr(values.ValueClass, "_multiprocess", False) else None


class Metrics:
    """Requests by endpoint, code and model, latency and batch-size histograms and queue depth by
    model, errors. ``model`` is "" for what belongs to no model (health, metadata of the server)."""

    def __init__(self, queue_depths: Callable[[], Mapping[str, int]]) -> None:
        self._folder = multiprocess_dir()
        # with files, the scrape builds its own registry from them; these objects only write
        registry = None if self._folder else CollectorRegistry()
        self._registry = registry
        self._requests = Counter("lakeinfer_requests", "Requests by endpoint, status code and model (gRPC: endpoint grpc_*, the status name).",
                                 ["endpoint", "code", "model"], registry=registry)
        self._errors = Counter("lakeinfer_errors", "Failed requests by kind of error and model.", ["kind", "model"],
                               registry=registry)
        self._latency = Histogram("lakeinfer_request_seconds", "Request latency.", ["endpoint", "model"],
                                  buckets=LATENCY_BUCKETS, registry=registry)
        self._batch_rows = Histogram("lakeinfer_batch_rows", "Rows per model call.", ["model"],
                                     buckets=BATCH_BUCKETS, registry=registry)
        self._batch_requests = Histogram("lakeinfer_batch_requests", "Requests merged per model call.", ["model"],
                                         buckets=BATCH_BUCKETS, registry=registry)
        # livesum: the workers' queues added up, a worker that has exited counting for nothing
        self._queue = Gauge("lakeinfer_queue_depth", "Requests waiting for the model.", ["model"],
                            multiprocess_mode="livesum", registry=registry)
        self._queue_depths = queue_depths
        self._counts: dict[tuple[str, str, str], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}
        self._sizes: dict[str, tuple[Any, Any]] = {}
        self._depths: dict[str, Any] = {}

    @property
    def multiprocess(self) -> bool:
        return self._folder is not None

    def request(self, endpoint: str, code: int | str, seconds: float, model: str = "") -> None:
        key = (endpoint, str(code), model)
        count = self._counts.get(key)
        if count is None:  # labels() looked up once per label set: it costs more than the increment
            count = self._counts[key] = self._requests.labels(endpoint=endpoint, code=key[1], model=model)
        count.inc()
        self._timer(endpoint, model).observe(seconds)
        self._sample_depth()

    def shed(self, endpoint: str, model: str, seconds: float) -> None:
        """A full queue's 503, answered before routing (see shed.py)."""
        self._requests.labels(endpoint=endpoint, code="503", model=model).inc()
        self._timer(endpoint, model).observe(seconds)
        self._errors.labels(kind="503", model=model).inc()

    def _timer(self, endpoint: str, model: str) -> Any:
        timer = self._timers.get((endpoint, model))
        if timer is None:
            timer = self._timers[(endpoint, model)] = self._latency.labels(endpoint=endpoint, model=model)
        return timer

    def error(self, kind: str, model: str = "") -> None:
        self._errors.labels(kind=kind, model=model).inc()

    def batch(self, requests: int, rows: int, model: str = "") -> None:
        sizes = self._sizes.get(model)
        if sizes is None:
            sizes = self._sizes[model] = (self._batch_requests.labels(model=model), self._batch_rows.labels(model=model))
        sizes[0].observe(requests)
        sizes[1].observe(rows)
        self._sample_depth()

    def _sample_depth(self) -> None:
        # A gauge in files cannot be read by callback from another worker's scrape, so each
        # worker writes its depths as its requests and model calls end, and when it is scraped.
        for model, depth in self._queue_depths().items():
            gauge = self._depths.get(model)
            if gauge is None:
                gauge = self._depths[model] = self._queue.labels(model=model)
            gauge.set(depth)

    def render(self) -> bytes:
        self._sample_depth()
        if self._folder is None:
            assert self._registry is not None
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._folder)
        return generate_latest(registry)

    def close(self) -> None:
        """This worker is exiting: its queue depth no longer counts (its counters still do)."""
        if self._folder is not None:
            multiprocess.mark_process_dead(os.getpid(), self._folder)
