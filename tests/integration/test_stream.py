"""lakeinfer stream against a real Kafka broker started from Maven Central jars by scripts/kafka.sh."""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FEATURES, Trained, read_output, run_cli
from tests.kafka_helpers import (
    consume,
    create_topics,
    produce,
    records,
    stream_cli,
    wait_for_members,
)
from tests.serving import free_port
from tests.slow_model import SlowEcho


def _topics(broker: str) -> tuple[str, str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = (f"in-{suffix}", f"out-{suffix}", f"dlq-{suffix}")
    create_topics(broker, *names)
    return names


def _stop(proc) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _wait_for(broker: str, topic: str, n: int, timeout: float = 90) -> list:  # type: ignore[type-arg]
    return consume(broker, topic, expect=n, timeout=timeout)


def _metrics_when(port: int, done: Callable[[dict[str, float]], bool], timeout: float = 30) -> dict[str, float]:
    """The scorer's metrics once ``done`` holds for them: a batch is counted just after its commit."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        seen = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
        if done(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_records_in_predictions_out_equal_batch(broker: str, onnx_model: Trained, tmp_path: Path) -> None:
    source, sink, dlq = _topics(broker)
    sent = records(600)
    produce(broker, source, sent)
    proc = stream_cli("--model", onnx_model.path, *onnx_model.cli, "--bootstrap-servers", broker,
                      "--input-topic", source, "--output-topic", sink, "--dead-letter-topic", dlq, "--keep", "id",
                      "--group-id", f"g-{source}")
    got = _wait_for(broker, sink, 600)
    code, err = _stop(proc)
    assert code == 0, err
    assert "stopped: consumed=600 produced=600" in err
    assert len(got) == 600
    by_id = {json.loads(m.value())["id"]: (m.key(), json.loads(m.value())) for m in got}
    assert sorted(by_id) == list(range(600))
    assert all(key == str(i).encode() for i, (key, _) in by_id.items())  # the input's key

    table = pa.Table.from_pylist([json.loads(v) for _, v in sent])
    pq.write_table(table, tmp_path / "rows.parquet")
    assert run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", tmp_path / "rows.parquet",
                   "--output", tmp_path / "out", "--keep", "id").returncode == 0
    batch = read_output(tmp_path / "out")
    assert [by_id[i][1]["prediction"] for i in range(600)] == batch["prediction"].tolist()
    # the same single-threaded calls as batch: its answers bit for bit
    np.testing.assert_array_equal([by_id[i][1]["probability"] for i in range(600)], np.stack(batch["probability"]))


def test_poison_messages_go_to_the_dead_letter_topic(broker: str, onnx_model: Trained) -> None:
    source, sink, dlq = _topics(broker)
    good = records(100)
    poison = [(b"p1", b"{not json"),
              (b"p2", json.dumps({"id": 1000, **{f: 1.0 for f in FEATURES[:-1]}}).encode()),
              (b"p3", json.dumps({"id": 1001, **{f: 1.0 for f in FEATURES}, "f2": "high"}).encode()),
              (b"p4", b"[1, 2, 3]"),
              (b"p5", b"\xff\xfe binary")]
    produce(broker, source, good[:50] + poison + good[50:])
    port = free_port()
    proc = stream_cli("--model", onnx_model.path, *onnx_model.cli, "--bootstrap-servers", broker,
                      "--input-topic", source, "--output-topic", sink, "--dead-letter-topic", dlq,
                      "--group-id", f"g-{source}", "--max-batch-size", "40", "--metrics-port", port)
    outputs = _wait_for(broker, sink, 100)
    dead = _wait_for(broker, dlq, 5)
    counted = _metrics_when(port, lambda m: m.get("lakeinfer_stream_consumed_total", 0) >= 105)
    code, err = _stop(proc)
    assert counted["lakeinfer_stream_consumed_total"] == 105
    assert counted["lakeinfer_stream_produced_total"] == 100
    assert counted["lakeinfer_stream_dead_lettered_total"] == 5
    assert counted["lakeinfer_stream_batch_seconds_count"] >= 3  # 105 messages, at most 40 a batch
    assert counted["lakeinfer_stream_lag"] == 0
    assert code == 0, err
    assert len(outputs) == 100
    letters = {m.key(): json.loads(m.value()) for m in dead}
    assert set(letters) == {b"p1", b"p2", b"p3", b"p4", b"p5"}
    assert "not valid JSON" in letters[b"p1"]["error"] and letters[b"p1"]["value"] == "{not json"
    # a missing field is a missing value: the same rule and words as every other mode
    assert letters[b"p2"]["error"] == "feature column 'f4' is null"
    assert letters[b"p3"]["error"] == "field 'f2' is str; the model needs a number"
    assert "JSON object" in letters[b"p4"]["error"]
    assert letters[b"p5"]["value_encoding"] == "hex"
    assert all(v["topic"] == source and v["offset"] >= 0 and v["partition"] >= 0 for v in letters.values())
    headers = dict(next(m for m in dead if m.key() == b"p2").headers())
    assert headers["lakeinfer.error"] == b"feature column 'f4' is null"


@pytest.mark.parametrize("exactly_once", [True, False])
def test_sigkill_and_restart(broker: str, tmp_path: Path, exactly_once: bool) -> None:
    model = tmp_path / "echo.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=0.15), model)
    source, sink, dlq = _topics(broker)
    total = 3000
    produce(broker, source, records(total))
    args = ["--model", model, "--trust-model", "--features", ",".join(FEATURES), "--bootstrap-servers", broker,
            "--input-topic", source, "--output-topic", sink, "--group-id", f"g-{source}", "--keep", "id",
            "--max-batch-size", "100", *(["--exactly-once"] if exactly_once else []),
            # a session of 10 s: the restarted process gets the killed one's partitions without 45 s of waiting
            "--max-poll-interval-ms", "10000"]
    first = stream_cli(*args)
    deadline = time.monotonic() + 60
    seen = 0
    while seen < 300:
        assert time.monotonic() < deadline and first.poll() is None, "the stream produced nothing"
        seen = len(consume(broker, sink, expect=300, timeout=2, read_committed=False, settle=0))
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert seen < total, "the stream finished before it could be killed"
    second = stream_cli(*args)
    got = consume(broker, sink, expect=total, timeout=120, settle=3)
    code, err = _stop(second)
    assert code == 0, err
    ids = [json.loads(m.value())["id"] for m in got]
    assert set(ids) == set(range(total))  # nothing lost
    if exactly_once:
        assert len(ids) == total  # a read_committed consumer sees every input exactly once
    first_feature = {json.loads(v)["id"]: json.loads(v)["f0"] for _, v in records(total)}
    for m in got:  # each output belongs to its own input
        value = json.loads(m.value())
        assert value["prediction"] == pytest.approx(10 * first_feature[value["id"]])


def test_slow_model_does_not_lose_its_partitions(broker: str, tmp_path: Path) -> None:
    model = tmp_path / "slow.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=8.0), model)
    source, sink, _ = _topics(broker)
    produce(broker, source, records(20))
    proc = stream_cli("--model", model, "--trust-model", "--features", ",".join(FEATURES), "--bootstrap-servers",
                      broker, "--input-topic", source, "--output-topic", sink, "--group-id", f"g-{source}",
                      "--max-batch-size", "20", "--max-wait-ms", "2000", "--max-poll-interval-ms", "6000", "--keep", "id",
                      "--exactly-once", env={"LAKEINFER_LOG": "WARNING"})
    got = consume(broker, sink, expect=20, timeout=90, settle=1)
    code, err = _stop(proc)
    assert code == 0, err
    assert sorted(json.loads(m.value())["id"] for m in got) == list(range(20))
    assert "max.poll.interval" not in err and "rebalance" not in err.lower(), err[-2000:]


def test_two_processes_share_the_partitions(broker: str, tmp_path: Path) -> None:
    model = tmp_path / "echo.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=0.05), model)
    source, sink, _ = _topics(broker)
    args = ["--model", model, "--trust-model", "--features", ",".join(FEATURES), "--bootstrap-servers", broker,
            "--input-topic", source, "--output-topic", sink, "--group-id", f"g-{source}", "--keep", "id",
            "--max-batch-size", "50"]
    procs = [stream_cli(*args), stream_cli(*args)]
    wait_for_members(broker, f"g-{source}", 2)  # both joined the group before the records arrive
    produce(broker, source, records(2000))
    got = consume(broker, sink, expect=2000, timeout=90, settle=2)
    results = [_stop(p) for p in procs]
    assert sorted(json.loads(m.value())["id"] for m in got) == list(range(2000))
    consumed = [int(err.split("stopped: consumed=")[1].split()[0]) for _, err in results]
    assert all(code == 0 for code, _ in results)
    assert sum(consumed) == 2000 and all(c > 0 for c in consumed), consumed


def test_exactly_once_when_a_second_process_joins_in_a_backlog(broker: str, tmp_path: Path) -> None:
    # one transaction covers many micro-batches while a backlog is caught up: when the second
    # process joins, the first must produce and commit all it read before giving partitions away
    model = tmp_path / "echo.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=0.25), model)  # 30 s for one process: time for a second to start
    source, sink, _ = _topics(broker)
    total = 6000
    produce(broker, source, records(total))
    args = ["--model", model, "--trust-model", "--features", ",".join(FEATURES), "--bootstrap-servers", broker,
            "--input-topic", source, "--output-topic", sink, "--group-id", f"g-{source}", "--keep", "id",
            "--max-batch-size", "50", "--exactly-once", "--commit-interval-ms", "10000"]
    first = stream_cli(*args, "--transactional-id", f"first-{source}")
    deadline = time.monotonic() + 60
    while len(consume(broker, sink, expect=200, timeout=2, read_committed=False, settle=0)) < 200:
        assert time.monotonic() < deadline and first.poll() is None, "the stream produced nothing"
    second = stream_cli(*args, "--transactional-id", f"second-{source}")
    got = consume(broker, sink, expect=total, timeout=120, settle=3)
    results = [_stop(p) for p in (first, second)]
    assert all(code == 0 for code, _ in results), results
    consumed = [int(err.split("stopped: consumed=")[1].split()[0]) for _, err in results]
    assert consumed[1] > 0, "the second process joined after the backlog was done"
    ids = [json.loads(m.value())["id"] for m in got]
    assert sorted(ids) == list(range(total))  # each input exactly once, none lost


def test_spark_structured_streaming(broker: str, onnx_model: Trained, tmp_path: Path) -> None:
    source, sink, _ = _topics(broker)
    sent = records(300)
    produce(broker, source, sent)
    proc = stream_cli("--engine", "spark", "--master", "local[2]", "--checkpoint", tmp_path / "checkpoint",
                      "--trigger", "1 second", "--model", onnx_model.path, *onnx_model.cli,
                      "--bootstrap-servers", broker, "--input-topic", source, "--output-topic", sink, "--keep", "id")
    got = consume(broker, sink, expect=300, timeout=240, settle=2)
    code, err = _stop(proc)
    assert code == 0, err[-3000:]
    values = {json.loads(m.value())["id"]: json.loads(m.value()) for m in got}
    assert sorted(values) == list(range(300)), err[-3000:]
    assert all(m.key() == str(json.loads(m.value())["id"]).encode() for m in got)
    table = pa.Table.from_pylist([json.loads(v) for _, v in sent])
    pq.write_table(table, tmp_path / "rows.parquet")
    assert run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", tmp_path / "rows.parquet",
                   "--output", tmp_path / "out", "--keep", "id").returncode == 0
    batch = read_output(tmp_path / "out")
    assert [values[i]["prediction"] for i in range(300)] == batch["prediction"].tolist()


def test_at_least_once_never_commits_undelivered_outputs(broker: str, onnx_model: Trained) -> None:
    # the output topic takes no message over 64 bytes: every prediction is refused by the broker
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    suffix = uuid.uuid4().hex[:8]
    source, sink = f"in-{suffix}", f"tiny-{suffix}"
    create_topics(broker, source, partitions=1)
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(sink, num_partitions=1, replication_factor=1,
                                  config={"max.message.bytes": "64"})])[sink].result(30)
    produce(broker, source, records(20))
    group = f"g-{suffix}"
    proc = stream_cli("--model", onnx_model.path, *onnx_model.cli, "--bootstrap-servers", broker,
                      "--input-topic", source, "--output-topic", sink, "--group-id", group, "--keep", "id")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert re.match(r"lakeinfer: error: Kafka refused \d+ outputs \(tiny-", lines[-1]), lines[-1]
    assert "offsets not committed" in lines[-1]
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group})
    try:
        (committed,) = consumer.committed([TopicPartition(source, 0)], timeout=30)
    finally:
        consumer.close()
    assert committed.offset < 0  # nothing committed: a restart consumes the batch again


@pytest.mark.parametrize("exactly_once", [True, False])
def test_the_group_is_joined_while_the_model_loads(broker: str, tmp_path: Path, exactly_once: bool) -> None:
    # the clients connect and join the group while the model loads; a model that then fails to
    # load leaves no member behind, nor a process that hangs on its clients
    from confluent_kafka.admin import AdminClient

    model = tmp_path / "echo.joblib"
    joblib.dump(SlowEcho(3, delay=0.0, load_delay=4.0), model)  # three features, five named: refused once loaded
    source, sink, _ = _topics(broker)
    group = f"g-{source}"
    proc = stream_cli("--model", model, "--trust-model", "--features", ",".join(FEATURES), "--bootstrap-servers",
                      broker, "--input-topic", source, "--output-topic", sink, "--group-id", group,
                      *(["--exactly-once"] if exactly_once else []))
    wait_for_members(broker, group, 1, timeout=30)  # joined, the model still loading
    assert proc.poll() is None
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    assert "the model takes 3 features but 5 were named" in err.strip().splitlines()[-1], err
    admin = AdminClient({"bootstrap.servers": broker})
    assert not admin.describe_consumer_groups([group])[group].result(timeout=30).members
