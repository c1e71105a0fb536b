"""The stream scorer's metrics endpoint, scraped over real HTTP."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lakeinfer.errors import ConfigError
from lakeinfer.stream.metrics import StreamMetrics
from tests.serving import free_port


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_lag_and_batch_seconds_on_the_port() -> None:
    port = free_port()
    metrics = StreamMetrics(port)
    try:
        assert metrics.port == port
        metrics.batch(consumed=10, produced=8, dead_lettered=2, seconds=0.004)
        metrics.batch(consumed=5, produced=5, dead_lettered=0, seconds=0.3)
        metrics.lag(42)
        metrics.lag(None)  # unknown: the last value stands
        seen = _scrape(port)
    finally:
        metrics.close()
    assert seen["lakeinfer_stream_consumed_total"] == 15
    assert seen["lakeinfer_stream_produced_total"] == 13
    assert seen["lakeinfer_stream_dead_lettered_total"] == 2
    assert seen["lakeinfer_stream_batch_seconds_count"] == 2
    assert seen["lakeinfer_stream_batch_seconds_sum"] == pytest.approx(0.304)
    assert seen["lakeinfer_stream_lag"] == 42
    with pytest.raises(httpx.TransportError):  # closed: the port is given back
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_two_scorers_in_one_process_count_apart() -> None:
    first, second = StreamMetrics(free_port()), StreamMetrics(free_port())
    try:
        first.batch(consumed=3, produced=3, dead_lettered=0, seconds=0.01)
        assert _scrape(first.port)["lakeinfer_stream_consumed_total"] == 3
        assert _scrape(second.port)["lakeinfer_stream_consumed_total"] == 0
    finally:
        first.close()
        second.close()


def test_a_busy_metrics_port_is_a_config_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics port {port} on 127.0.0.1 is in use"):
            StreamMetrics(port)
