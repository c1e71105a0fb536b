"""A few Prometheus metrics in the text exposition format, with no dependency.

Each worker process keeps its own; every series carries the worker's ``pid`` label so that
scrapes of several workers add up instead of overwriting each other.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def _labels(pairs: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(pairs.items()))
    return "{" + inner + "}"


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1


class Metrics:
    """Requests by endpoint and code, latency and batch-size histograms, queue depth, errors."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self._pid = str(os.getpid())
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._errors: dict[str, int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = {}
        self._batch_rows = _Histogram(BATCH_BUCKETS)
        self._batch_requests = _Histogram(BATCH_BUCKETS)
        self._queue_depth = queue_depth

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        with self._lock:
            self._requests[(endpoint, str(code))] += 1
            self._latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] += 1

    def batch(self, requests: int, rows: int) -> None:
        with self._lock:
            self._batch_requests.observe(requests)
            self._batch_rows.observe(rows)

    def render(self) -> str:
        pid = {"pid": self._pid}
        lines: list[str] = []
        with self._lock:
            lines += ["# HELP lakeinfer_requests_total HTTP requests by endpoint and status code.",
                      "# TYPE lakeinfer_requests_total counter"]
            for (endpoint, code), n in sorted(self._requests.items()):
                lines.append(f"lakeinfer_requests_total{_labels({**pid, 'endpoint': endpoint, 'code': code})} {n}")
            lines += ["# HELP lakeinfer_errors_total Failed requests by kind of error.",
                      "# TYPE lakeinfer_errors_total counter"]
            for kind, n in sorted(self._errors.items()):
                lines.append(f"lakeinfer_errors_total{_labels({**pid, 'kind': kind})} {n}")
            lines += ["# HELP lakeinfer_request_seconds Request latency.", "# TYPE lakeinfer_request_seconds histogram"]
            for endpoint, hist in sorted(self._latency.items()):
                lines += _histogram("lakeinfer_request_seconds", hist, {**pid, "endpoint": endpoint})
            lines += ["# HELP lakeinfer_batch_rows Rows per model call.", "# TYPE lakeinfer_batch_rows histogram"]
            lines += _histogram("lakeinfer_batch_rows", self._batch_rows, pid)
            lines += ["# HELP lakeinfer_batch_requests Requests merged per model call.",
                      "# TYPE lakeinfer_batch_requests histogram"]
            lines += _histogram("lakeinfer_batch_requests", self._batch_requests, pid)
        lines += ["# HELP lakeinfer_queue_depth Requests waiting for the model.", "# TYPE lakeinfer_queue_depth gauge",
                  f"lakeinfer_queue_depth{_labels(pid)} {self._queue_depth()}"]
        return "\n".join(lines) + "\n"


def _histogram(name: str, hist: _Histogram, labels: dict[str, str]) -> list[str]:
    lines = [f"{name}_bucket{_labels({**labels, 'le': str(b)})} {c}" for b, c in zip(hist.buckets, hist.counts, strict=True)]
    lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {hist.n}")
    lines.append(f"{name}_sum{_labels(labels)} {hist.total}")
    lines.append(f"{name}_count{_labels(labels)} {hist.n}")
    return lines
