"""Streaming throughput and latency against a real Kafka broker (scripts/kafka.sh), in one run.

With the RandomForest of bench/batch_local.py (ONNX, 20 float32 features):

  batch      `lakeinfer batch` over the same records as Parquet (the anchor: rows/s)
  alo        `lakeinfer stream`, at-least-once: msgs/s over a backlog of N JSON records, in a
             process of its own, timed from the model's load to the last commit
  eos        the same with --exactly-once (Kafka transactions)
  ledger     eos with --ledger delta:...: every output also in a Delta table, exactly once
             (target >= 0.8x eos)
  latency    end-to-end latency p50/p99 at a fixed 1,000 msg/s, both modes (producer send ->
             prediction readable by a read_committed consumer)
  spark      `lakeinfer stream --engine spark` (Structured Streaming) on the same broker: msgs/s
  no work    eos again with a model that does no work (bench/batch_local.py's), and the whole
             machine's busy core-seconds meanwhile: what the broker, the clients, the JSON and
             the loop cost without the model

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
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from batch_local import CORES, FEATURES, ceiling, io_model, train_models  # noqa: E402
from tests.kafka_helpers import create_topics, start_broker, stop_broker  # noqa: E402
from tests.serving import free_port  # noqa: E402


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


def stream_throughput(bootstrap: str, model: Path, source: str, n: int, exactly_once: bool,
                      ledger: Path | None = None) -> tuple[float, float]:
    """(msgs/s, the whole machine's busy core-seconds meanwhile) of a stream over ``n`` records, run
    in a process of its own as `lakeinfer stream` runs: in this one, whose heap holds what making
    the records left behind, the same stream ran about 5% slower."""
    job = json.dumps({"bootstrap": bootstrap, "model": str(model), "source": source, "n": n, "eos": exactly_once,
                      "ledger": None if ledger is None else str(ledger)})
    out = subprocess.run([sys.executable, __file__, "--one-stream", job], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the stream failed: {out.stderr[-2000:]}")
    rate, busy = json.loads(out.stdout.strip().splitlines()[-1])
    return rate, busy


def one_stream(job: dict) -> None:
    import psutil

    from lakeinfer.runtime import PipelineRecipe
    from lakeinfer.stream.kafka import KafkaScorer, StreamConfig, run

    sink = f"out-{uuid.uuid4().hex[:6]}"
    create_topics(job["bootstrap"], sink)
    config = StreamConfig(recipe=PipelineRecipe(model_path=job["model"]), bootstrap_servers=job["bootstrap"],
                          input_topic=job["source"], output_topic=sink, group_id=f"bench-{uuid.uuid4().hex[:6]}",
                          exactly_once=job["eos"], keep=["id"], max_messages=job["n"], metrics_interval_s=3600)
    if job.get("ledger"):  # run() starts the ledger's committer beside the scorer and ships the rest at the end
        config.ledger, config.ledger_wal = f"delta:{job['ledger']}", job["ledger"] + "-wal"
    before = psutil.cpu_times()
    start = time.perf_counter()
    stats = run(config) if config.ledger else KafkaScorer(config).run()
    elapsed = time.perf_counter() - start
    after = psutil.cpu_times()
    assert stats.produced == job["n"], stats
    busy = sum(after) - sum(before) - (after.idle - before.idle) - (after.iowait - before.iowait)
    print(json.dumps([job["n"] / elapsed, busy]))


def latency(bootstrap: str, model: Path, exactly_once: bool, seconds: float, rate: int = 1000) -> tuple[float, float]:
    from confluent_kafka import Consumer, Producer

    source, sink = f"lat-in-{uuid.uuid4().hex[:6]}", f"lat-out-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, source, sink)
    proc = subprocess.Popen([sys.executable, "-m", "lakeinfer", "stream", "--model", str(model), "--bootstrap-servers",
                             bootstrap, "--input-topic", source, "--output-topic", sink, "--keep", "sent",
                             "--group-id", f"lat-{uuid.uuid4().hex[:6]}", "--max-wait-ms", "5",
                             *(["--exactly-once"] if exactly_once else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-check-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "fetch.wait.max.ms": 5})
    consumer.subscribe([sink])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    row = dict(zip(FEATURES, np.random.default_rng(1).normal(size=len(FEATURES)).round(5).tolist(), strict=True))
    time.sleep(8)  # the stream joins its group
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
    idle, busy = stream_throughput(bootstrap, io_model(work), source, n, exactly_once=True)
    forest = ceiling(model, work / "records.parquet")
    most = n / (n / forest + busy / CORES)
    print(f"  exactly-once, model doing no work {idle:>8,.0f} msgs/s, {busy:.2f} busy core-seconds (whole machine)\n"
          f"  the forest alone (in-memory ceiling) {forest:>7,.0f} rows/s\n"
          f"  bound for exactly-once          {most:>10,.0f} msgs/s  ({most / batch:.2f}x batch)", flush=True)


def spark_throughput(bootstrap: str, model: Path, source: str, n: int, work: Path) -> float:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    sink = f"spark-out-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, sink)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lakeinfer", "stream", "--engine", "spark", "--master", "local[2]",
                             "--checkpoint", str(work / "checkpoint"), "--model", str(model), "--bootstrap-servers",
                             bootstrap, "--input-topic", source, "--output-topic", sink, "--keep", "id"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "spark-count"})
    try:
        while proc.poll() is None:
            try:
                total = sum(consumer.get_watermark_offsets(TopicPartition(sink, p), timeout=5)[1] for p in range(4))
            except KafkaException:  # a leader not elected yet for the new topic
                total = 0
            if total >= n:
                return n / (time.perf_counter() - start)
            time.sleep(0.5)
        raise SystemExit("the Spark stream exited early")
    finally:
        consumer.close()
        proc.terminate()
        proc.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--one-stream", help=argparse.SUPPRESS)  # internal: one stream in this process
    args = parser.parse_args()
    if args.one_stream:
        one_stream(json.loads(args.one_stream))
        return
    work = Path(tempfile.mkdtemp(prefix="lakeinfer-stream-bench-"))
    home = work / "kafka"
    bootstrap = start_broker(home, free_port())
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
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lakeinfer", "batch", "--model", str(model), "--input",
                        str(work / "records.parquet"), "--output", str(work / "batch-out"), "--keep", "id", "--quiet"],
                       check=True)
        batch = args.records / (time.perf_counter() - start)
        print(f"  batch (Parquet, same rows)      {batch:>10,.0f} rows/s", flush=True)
        alo, _ = stream_throughput(bootstrap, model, source, args.records, exactly_once=False)
        print(f"  stream at-least-once            {alo:>10,.0f} msgs/s  ({alo / batch:.2f}x batch)", flush=True)
        eos, _ = stream_throughput(bootstrap, model, source, args.records, exactly_once=True)
        print(f"  stream exactly-once             {eos:>10,.0f} msgs/s  ({eos / batch:.2f}x batch)", flush=True)
        logged, _ = stream_throughput(bootstrap, model, source, args.records, exactly_once=True,
                                      ledger=work / "ledger")
        print(f"  exactly-once with --ledger      {logged:>10,.0f} msgs/s  ({logged / eos:.2f}x exactly-once)",
              flush=True)
        bound_line(bootstrap, source, args.records, work, model, batch)
        for mode, flag in (("at-least-once", False), ("exactly-once", True)):
            p50, p99 = latency(bootstrap, model, flag, args.latency_seconds)
            print(f"  latency at 1,000 msg/s, {mode:<14} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms", flush=True)
        if not args.no_spark:
            rate = spark_throughput(bootstrap, model, source, args.records, work)
            print(f"  Spark Structured Streaming      {rate:>10,.0f} msgs/s  (start-up included)", flush=True)
    finally:
        stop_broker(home)
        if os.environ.get("KEEP_BENCH") is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
