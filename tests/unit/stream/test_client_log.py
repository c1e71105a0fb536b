"""librdkafka's log while the model loads: held, passed on once it loaded, dropped if it failed."""

from __future__ import annotations

import logging

import confluent_kafka
import pytest

from lakeinfer.stream.clients import HeldLog
from tests.serving import free_port


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("keep", [True, False])
def test_a_refused_connection_is_reported_only_when_the_model_loaded(keep: bool) -> None:
    target = logging.Logger("target", logging.WARNING)
    seen = _Records()
    target.addHandler(seen)
    held = HeldLog(target)
    producer = confluent_kafka.Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "logger": held.logger})
    while not held._held:  # the log is served by poll; the refusal comes at once
        producer.poll(0.05)
    assert seen.lines == []
    held.settle(keep=keep)
    producer.flush(0.3)  # closing may log more
    refused = [line for line in seen.lines if "Connection refused" in line]
    assert bool(refused) == keep, seen.lines
