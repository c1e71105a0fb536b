"""A real Kafka broker for the tests (scripts/kafka.sh), and small producer/consumer helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lakeinfer._ports import free_ports

ROOT = Path(__file__).resolve().parents[1]


def start_broker(home: Path) -> str:
    """A broker on two free ports of 127.0.0.1 (clients, controller); started again on two others
    once if another process took one of them between their pick and the broker's bind."""
    for attempt in (1, 2):
        port, controller = free_ports(2)
        result = subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "start", str(port), str(controller)],
                                capture_output=True, text=True, timeout=600, env={**os.environ, "KAFKA_HOME_DIR": str(home)})
        if result.returncode == 0:
            return result.stdout.strip().splitlines()[-1]
        if attempt == 1 and "Address already in use" in result.stderr:
            stop_broker(home)
            continue
        raise RuntimeError(f"the Kafka broker did not start: {result.stderr[-2000:]}")
    raise AssertionError("unreachable")


def stop_broker(home: Path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "stop"], capture_output=True, timeout=120,
                   env={**os.environ, "KAFKA_HOME_DIR": str(home)})


def create_topics(bootstrap: str, *names: str, partitions: int = 4) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    for future in futures.values():
        future.result(30)


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    n = 0
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
        n += 1
    producer.flush(30)
    return n


def consume(bootstrap: str, topic: str, *, expect: int, timeout: float = 60, read_committed: bool = True,
            settle: float = 2.0) -> list[Any]:
    """Messages of ``topic`` from the start: at least ``expect``, then ``settle`` s more for extras."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    settle_until = None
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is None:
                    out.append(m)
            if len(out) >= expect and settle_until is None:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    finally:
        consumer.close()
    return out


def wait_for_members(bootstrap: str, group: str, count: int, *, timeout: float = 60) -> None:
    """Wait until consumer group ``group`` is stable with ``count`` members holding partitions."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = admin.describe_consumer_groups([group])[group]
        try:
            described = found.result(timeout=10)
        except Exception:  # the group does not exist yet
            described = None
        if (described is not None and described.state == ConsumerGroupState.STABLE
                and sum(1 for m in described.members if m.assignment.topic_partitions) == count):
            return
        time.sleep(0.2)
    raise AssertionError(f"consumer group {group} did not reach {count} members with partitions in {timeout} s")


def stream_cli(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lakeinfer", "stream", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p), **(env or {})})


def records(n: int, start: int = 0, features: int = 5) -> list[tuple[bytes, bytes]]:
    import numpy as np

    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        x = np.round(rng.normal(size=features) * 1024) / 1024
        out.append((str(i).encode(), json.dumps({"id": i, **{f"f{j}": float(x[j]) for j in range(features)}}).encode()))
    return out
