"""Streaming throughput and latency against a real Kafka broker (scripts/kafka.sh), in one run,
each figure timed as a user sees it.

With the RandomForest of bench/batch_local.py (ONNX, 20 float32 features):

  batch      `lakeinfer batch` over the same records as Parquet (the anchor: rows/s), timed from the
             command's start until it exits, its output committed and readable
  alo        `lakeinfer stream` (the real CLI, a fresh process), at-least-once: msgs/s over a backlog
             of N JSON records, timed from the command's start until a read_committed consumer in
             another process, subscribed to the output topic before the command starts, has read
             all N outputs: start-up, group join and model load included; with the time from the
             command's start to the first output read
  eos        the same with --exactly-once (Kafka transactions)
  ledger     eos with --ledger delta:...: every output also in a Delta table, exactly once
             (target >= 0.8x eos); the table is checked for N rows after the stream stops
  latency    end-to-end latency p50/p99 at a fixed 1,000 msg/s, both modes (producer send ->
             prediction readable by a read_committed consumer), after the stream has joined its group
  spark      `lakeinfer stream --engine spark` (Structured Streaming) on the same broker: msgs/s,
             timed as alo
  no work    eos again with a model that does no work (bench/batch_local.py's), and the whole
             machine's busy core-seconds from the command's start until the consumer has read the
             last output: what start-up, the broker, the clients (the reading consumer's too), the
             JSON and the loop cost without the model

and the ratios eos/batch (target >= 0.5) and the p99 at 1,000 msg/s (target <= 50 ms), and the
bound: the rate eos would reach if the forest ran at onnxruntime's in-memory ceiling on these
records (bench/batch_local.py's (a)) and everything else were hidden behind it,
records / (records / ceiling + busy core-seconds without the model / cores).

    python bench/stream.py [--records 1000000] [--latency-seconds 20] [--no-spark]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from batch_local import CORES, FEATURES, ceiling, io_model, train_models  # noqa: E402
from tests.kafka_helpers import create_topics, start_broker, stop_broker, wait_for_members  # noqa: E402


def produce_records(bootstrap: str, topic: str, n: int) -> pa.Table:
    from confluent_kafka import Producer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "compression.type": "lz4", "queue.buffering.max.messages": 500_000})
    rows = x.round(5).tolist()
    for i, row in enumerate(rows):
        value = json.dumps({"id": i, **dict(zip(FEATURES, row, strict=True))}).encode()
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush(120)
    return pa.table({"id": np.arange(n), **{f: x[:, j].round(5) for j, f in enumerate(FEATURES)}})


def warm_broker(bootstrap: str, topic: str) -> None:
    """A new broker makes its internal topics (group offsets, transaction state: 50 partitions each)
    on their first use, a second or more that a running cluster paid long ago: made here, untimed."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"warm-{uuid.uuid4().hex[:6]}"})
    producer.init_transactions(120)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"warm-{uuid.uuid4().hex[:6]}"})
    consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    consumer.close()


def settle() -> None:
    """Each timed command starts on a quiet machine: what the last one wrote (a million records,
    its outputs) is on disk, not being written back by the kernel while the next one runs."""
    os.sync()
    time.sleep(2)


def read_outputs(job: dict[str, Any]) -> None:
    """(internal) A read_committed consumer of the output topic in a process of its own: prints
    ``ready`` once the topic's partitions are its own (before the stream is started), then, once it
    has read ``n`` outputs, the wall-clock times of the first and of the n-th as JSON."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": job["bootstrap"], "group.id": f"bench-read-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "fetch.wait.max.ms": 10})
    assigned = threading.Event()
    consumer.subscribe([job["topic"]], on_assign=lambda *_: assigned.set())
    seen, first, last = 0, None, 0.0
    deadline = time.monotonic() + job["timeout"]
    while not assigned.is_set() and time.monotonic() < deadline:
        seen += sum(m.error() is None for m in consumer.consume(1000, 0.05))
    print("ready", flush=True)
    while seen < job["n"] and time.monotonic() < deadline:
        messages = consumer.consume(100_000, 0.01)
        last = time.time()
        read = sum(m.error() is None for m in messages)
        if read and first is None:
            first = last
        seen += read
    consumer.close()
    print(json.dumps([first, last, seen]), flush=True)


def timed_stream(bootstrap: str, n: int, args: list[str], *, timeout: float = 900) -> tuple[float, float, float, str]:
    """Run `lakeinfer stream ARGS --output-topic T` in a fresh process until a read_committed consumer
    in another process has read ``n`` outputs of T: (seconds from the command's start to the last
    output read, to the first, the whole machine's busy core-seconds meanwhile, the command's stderr
    after SIGTERM)."""
    import psutil

    sink = f"out-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, sink)
    reader = subprocess.Popen([sys.executable, __file__, "--read-outputs",
                               json.dumps({"bootstrap": bootstrap, "topic": sink, "n": n, "timeout": timeout})],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    if reader.stdout.readline().strip() != "ready":
        raise SystemExit("the reading consumer did not start")
    settle()
    with tempfile.TemporaryFile("w+") as err:
        before = psutil.cpu_times()
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "lakeinfer", "stream", *args, "--output-topic", sink],
                                stdout=subprocess.DEVNULL, stderr=err, text=True)

        def stop_reading() -> None:  # a stream that fails stops the wait for its outputs
            if proc.wait() != 0 and reader.poll() is None:
                reader.kill()

        threading.Thread(target=stop_reading, daemon=True).start()
        line = reader.stdout.readline()
        after = psutil.cpu_times()
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
        reader.wait(60)
        err.seek(0)
        log = err.read()
    if not line:
        raise SystemExit(f"the stream failed (exit {proc.returncode}): {log[-2000:]}")
    first, last, seen = json.loads(line)
    if seen < n or proc.returncode != 0:
        raise SystemExit(f"the stream gave {seen:,} of {n:,} outputs (exit {proc.returncode}): {log[-2000:]}")
    busy = sum(after) - sum(before) - (after.idle - before.idle) - (after.iowait - before.iowait)
    return last - start, first - start, busy, log


def stream_throughput(bootstrap: str, model: Path, source: str, n: int, exactly_once: bool,
                      ledger: Path | None = None) -> tuple[float, float, float]:
    """(msgs/s, seconds to the first output, the whole machine's busy core-seconds meanwhile) of
    `lakeinfer stream` over the ``n`` records of ``source``, from the command's start to the n-th
    output read by a read_committed consumer."""
    args = ["--model", str(model), "--bootstrap-servers", bootstrap, "--input-topic", source, "--keep", "id",
            "--group-id", f"bench-{uuid.uuid4().hex[:6]}", *(["--exactly-once"] if exactly_once else [])]
    if ledger is not None:
        args += ["--ledger", f"delta:{ledger}", "--ledger-wal", f"{ledger}-wal"]
    elapsed, first, busy, log = timed_stream(bootstrap, n, args)
    if f"stopped: consumed={n} produced={n}" not in log:
        raise SystemExit(f"the stream did not score each record once: {log[-2000:]}")
    if ledger is not None:
        from deltalake import DeltaTable

        rows = DeltaTable(str(ledger)).to_pyarrow_dataset().count_rows()
        if rows != n:
            raise SystemExit(f"the ledger holds {rows:,} rows, not {n:,}")
    return n / elapsed, first, busy


def latency(bootstrap: str, model: Path, exactly_once: bool, seconds: float, rate: int = 1000) -> tuple[float, float]:
    from confluent_kafka import Consumer, Producer

    source, sink = f"lat-in-{uuid.uuid4().hex[:6]}", f"lat-out-{uuid.uuid4().hex[:6]}"
    group = f"lat-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, source, sink)
    proc = subprocess.Popen([sys.executable, "-m", "lakeinfer", "stream", "--model", str(model), "--bootstrap-servers",
                             bootstrap, "--input-topic", source, "--output-topic", sink, "--keep", "sent",
                             "--group-id", group, "--max-wait-ms", "5",
                             *(["--exactly-once"] if exactly_once else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-check-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "fetch.wait.max.ms": 5})
    consumer.subscribe([sink])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    row = dict(zip(FEATURES, np.random.default_rng(1).normal(size=len(FEATURES)).round(5).tolist(), strict=True))
    wait_for_members(bootstrap, group, 1, timeout=120)  # the stream has joined its group
    while not consumer.assignment():
        consumer.poll(0.05)
    done = threading.Event()

    def send() -> None:
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < seconds:
            producer.produce(source, value=json.dumps({**row, "sent": time.time()}).encode())
            producer.poll(0)
            i += 1
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        producer.flush(30)
        done.set()

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    deadline = time.monotonic() + seconds + 30
    while time.monotonic() < deadline and not (done.is_set() and len(latencies) >= rate * seconds * 0.99):
        m = consumer.poll(0.05)  # one at a time: consume(n, t) would wait to fill n
        if m is not None and m.error() is None:
            latencies.append(time.time() - json.loads(m.value())["sent"])
    sender.join()
    consumer.close()
    proc.terminate()
    proc.wait(60)
    warm = np.array(latencies[rate * 2:]) * 1000  # after the first two seconds
    return float(np.percentile(warm, 50)), float(np.percentile(warm, 99))


def bound_line(bootstrap: str, source: str, n: int, work: Path, model: Path, batch: float) -> None:
    idle, _, busy = stream_throughput(bootstrap, io_model(work), source, n, exactly_once=True)
    forest = ceiling(model, work / "records.parquet")
    most = n / (n / forest + busy / CORES)
    print(f"  exactly-once, model doing no work {idle:>8,.0f} msgs/s, {busy:.2f} busy core-seconds (whole machine)\n"
          f"  the forest alone (in-memory ceiling) {forest:>7,.0f} rows/s\n"
          f"  bound for exactly-once          {most:>10,.0f} msgs/s  ({most / batch:.2f}x batch)", flush=True)


def spark_throughput(bootstrap: str, model: Path, source: str, n: int, work: Path) -> float:
    elapsed, _, _, _ = timed_stream(bootstrap, n, [
        "--engine", "spark", "--master", "local[2]", "--checkpoint", str(work / "checkpoint"), "--model", str(model),
        "--bootstrap-servers", bootstrap, "--input-topic", source, "--keep", "id"])
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--read-outputs", help=argparse.SUPPRESS)  # internal: the reading consumer
    args = parser.parse_args()
    if args.read_outputs:
        read_outputs(json.loads(args.read_outputs))
        return
    work = Path(tempfile.mkdtemp(prefix="lakeinfer-stream-bench-"))
    home = work / "kafka"
    bootstrap = start_broker(home)
    try:
        model = train_models(work)["random_forest"]
        source = f"records-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, source)
        start = time.perf_counter()
        table = produce_records(bootstrap, source, args.records)
        print(f"broker {bootstrap}; produced {args.records:,} JSON records of {len(FEATURES)} features "
              f"in {time.perf_counter() - start:.1f}s", flush=True)
        pq.write_table(table, work / "records.parquet", row_group_size=65536)
        warm_broker(bootstrap, source)
        settle()
        start = time.perf_counter()  # the output is committed (readable) before the command exits
        subprocess.run([sys.executable, "-m", "lakeinfer", "batch", "--model", str(model), "--input",
                        str(work / "records.parquet"), "--output", str(work / "batch-out"), "--keep", "id", "--quiet"],
                       check=True)
        batch = args.records / (time.perf_counter() - start)
        print(f"  batch (Parquet, same rows)      {batch:>10,.0f} rows/s", flush=True)
        alo, first, _ = stream_throughput(bootstrap, model, source, args.records, exactly_once=False)
        print(f"  stream at-least-once            {alo:>10,.0f} msgs/s  ({alo / batch:.2f}x batch; "
              f"first output read {first:.2f} s after the command's start)", flush=True)
        eos, first, _ = stream_throughput(bootstrap, model, source, args.records, exactly_once=True)
        print(f"  stream exactly-once             {eos:>10,.0f} msgs/s  ({eos / batch:.2f}x batch; "
              f"first output read {first:.2f} s after the command's start)", flush=True)
        logged, _, _ = stream_throughput(bootstrap, model, source, args.records, exactly_once=True,
                                         ledger=work / "ledger")
        print(f"  exactly-once with --ledger      {logged:>10,.0f} msgs/s  ({logged / eos:.2f}x exactly-once)",
              flush=True)
        bound_line(bootstrap, source, args.records, work, model, batch)
        for mode, flag in (("at-least-once", False), ("exactly-once", True)):
            p50, p99 = latency(bootstrap, model, flag, args.latency_seconds)
            print(f"  latency at 1,000 msg/s, {mode:<14} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms", flush=True)
        if not args.no_spark:
            rate = spark_throughput(bootstrap, model, source, args.records, work)
            print(f"  Spark Structured Streaming      {rate:>10,.0f} msgs/s", flush=True)
    finally:
        stop_broker(home)
        if os.environ.get("KEEP_BENCH") is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
