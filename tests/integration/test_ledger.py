"""The prediction ledger: served (and streamed) predictions in real Iceberg and Delta tables,
exactly once through kill -9 and restart, replayed by the batch engine."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from tests.conftest import FEATURES, Trained, run_cli
from tests.serving import ROOT, Server, column_tensors, free_port

triton_http = pytest.importorskip("tritonclient.http")
triton_grpc = pytest.importorskip("tritonclient.grpc")


@contextmanager
def ledger_server(model: Trained, *args: object, env: dict[str, str], cwd: Path,
                  grpc: bool = True) -> Iterator[tuple[Server, int | None]]:
    """``lakeinfer serve`` in a process group of its own (so that kill -9 reaches every worker)."""
    port, grpc_port = free_port(), free_port() if grpc else None
    extra = ["--grpc-port", str(grpc_port)] if grpc_port else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakeinfer", "serve", "--port", str(port), *extra, "--model", str(model.path),
         *model.cli, "--name", "rf", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    server = Server(proc, port)
    try:
        server.wait("/v2/health/ready")
        yield server, grpc_port
    finally:
        if proc.poll() is None:
            server.stop()
        else:
            proc.wait()
        assert proc.stderr is not None and proc.stdout is not None
        proc.stderr.close()
        proc.stdout.close()


def kill_group(server: Server) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()


class Traffic:
    """Concurrent tritonclient callers (HTTP without ids, gRPC half with them) until stopped; every 200's
    rows as the client received them, by (request id, row)."""

    def __init__(self, server: Server, grpc_port: int | None, X: np.ndarray, *, threads: int = 4) -> None:
        self.answered: dict[tuple[str, int], tuple[int, list[float]]] = {}
        self.run = os.urandom(4).hex()  # the ids a client gives are its own: unique across runs
        self.failures = 0
        self.errors: list[BaseException] = []  # a caller's failed check, raised by the test's thread
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i, server, grpc_port, X), daemon=True)
                         for i in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        if self.errors:
            raise self.errors[0]

    def _run(self, i: int, server: Server, grpc_port: int | None, X: np.ndarray) -> None:
        try:
            self._call(i, server, grpc_port, X)
        except BaseException as exc:
            self.errors.append(exc)

    def _call(self, i: int, server: Server, grpc_port: int | None, X: np.ndarray) -> None:
        rng = random.Random(i)
        use_grpc = grpc_port is not None and i % 2 == 1
        client: Any = (triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") if use_grpc
                       else triton_http.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=10))
        triton = triton_grpc if use_grpc else triton_http
        n = 0
        while not self._stop.is_set():
            start = rng.randrange(0, len(X) - 8)
            rows = X[start:start + rng.randint(1, 8)]
            given = f"{self.run}-{i}-{n}" if use_grpc and n % 2 else ""  # gRPC: every other request without one
            n += 1
            try:
                result = client.infer("rf", column_tensors(triton, rows, FEATURES), request_id=given)
            except Exception:
                self.failures += 1
                if self._stop.wait(0.01):
                    return
                continue
            response = result.get_response()
            request_id = response.id if use_grpc else response["id"]
            assert request_id, "a request without an id gets one"
            assert not given or request_id == given
            labels, proba = result.as_numpy("prediction"), result.as_numpy("probability")
            with self._lock:
                for r in range(len(rows)):
                    assert (request_id, r) not in self.answered
                    self.answered[(request_id, r)] = (int(labels[r]), [float(p) for p in proba[r]])


def read_ledger(uri: str, lake: dict[str, Any]) -> pa.Table:
    if uri.startswith("iceberg:"):
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return lake["catalog"].load_table(uri[len("iceberg:"):]).scan().to_arrow()
        except NoSuchTableError:
            return pa.table({"request_id": pa.array([], pa.string()), "row": pa.array([], pa.int32())})
    import deltalake

    try:
        return deltalake.DeltaTable(uri[len("delta:"):]).to_pyarrow_table()
    except deltalake.exceptions.TableNotFoundError:
        return pa.table({"request_id": pa.array([], pa.string()), "row": pa.array([], pa.int32())})


def wait_for_rows(uri: str, lake: dict[str, Any], keys: set[tuple[str, int]], timeout: float = 30) -> pa.Table:
    """The ledger once it holds every row of ``keys`` (polled, within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        table = read_ledger(uri, lake)
        have = set(zip(table.column("request_id").to_pylist(), table.column("row").to_pylist(), strict=True))
        if keys <= have or time.monotonic() > deadline:
            missing = keys - have
            assert not missing, f"{len(missing)} answered rows are not in the ledger, e.g. {sorted(missing)[:3]}"
            return table


def check_exactly_once(table: pa.Table, answered: dict[tuple[str, int], tuple[int, list[float]]]) -> None:
    rows = table.to_pylist()
    keys = [(r["request_id"], r["row"]) for r in rows]
    assert len(keys) == len(set(keys)), "a row is in the ledger twice"
    by_key = {(r["request_id"], r["row"]): r for r in rows}
    for key, (label, proba) in answered.items():
        logged = by_key[key]
        assert logged["prediction"] == label
        assert np.array_equal(np.array(logged["probability"], dtype=np.float64), np.array(proba, dtype=np.float64))


def _until(condition: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not hold within {timeout}s")


def _traffic_until(traffic: Traffic, rows: int) -> None:
    _until(lambda: len(traffic.answered) >= rows, what=f"{rows} answered rows")


@pytest.mark.parametrize(("kind", "workers"), [("iceberg", 2), ("delta", 1)])
def test_served_rows_reach_the_ledger_exactly_once_through_kill_9(kind: str, workers: int, lake: dict[str, Any],
                                                                  onnx_model: Trained, X: Any) -> None:
    uri = "iceberg:ns.ledger" if kind == "iceberg" else f"delta:{lake['cwd'] / 'ledger'}"
    features = X.to_numpy(np.float64)
    answered: dict[tuple[str, int], tuple[int, list[float]]] = {}
    rng = random.Random(26)
    args = ("--ledger", uri, "--ledger-interval", "0.5", "--workers", workers, "--max-wait-ms", "1")
    # 1: the workers under traffic, the whole process group killed -9 at a random moment
    with ledger_server(onnx_model, *args, env=lake["env"], cwd=lake["cwd"]) as (server, grpc_port):
        with Traffic(server, grpc_port, features) as traffic:
            _traffic_until(traffic, rng.randint(40, 200))  # a random moment: after a random number of rows
            kill_group(server)
        answered.update(traffic.answered)
    assert answered
    # 2: restarted on another port: what the killed run answered becomes visible while it runs; with
    # two workers, one killed -9 under traffic (uvicorn starts another); the records endpoint; a drain
    with ledger_server(onnx_model, *args, env=lake["env"], cwd=lake["cwd"]) as (server, grpc_port):
        wait_for_rows(uri, lake, set(answered))
        with Traffic(server, grpc_port, features) as traffic:
            _traffic_until(traffic, 30)
            if workers > 1:
                worker = int(httpx.get(server.url + "/v2/health/live").headers["x-lakeinfer-worker"])
                os.kill(worker, signal.SIGKILL)
                _traffic_until(traffic, len(traffic.answered) + 30)
        answered.update(traffic.answered)
        records = httpx.post(server.url + "/v1/models/rf/predict",
                             json={"instances": [dict(zip(FEATURES, map(float, features[0]), strict=True))]})
        assert records.status_code == 200, records.text
        record_id = records.json()["id"]
        assert record_id
        table = wait_for_rows(uri, lake, {*answered, (record_id, 0)})
        metrics = httpx.get(server.url + "/metrics").text
        assert "lakeinfer_ledger_rows_logged" in metrics and "lakeinfer_ledger_ready 1.0" in metrics
        assert server.stop() == 0
    table = read_ledger(uri, lake)
    check_exactly_once(table, answered)
    row = table.to_pylist()[0]
    assert {"model", "model_sha256", "received_at", "latency_ms", *FEATURES} <= set(row)
    assert row["model"] == "rf" and len(row["model_sha256"]) == 64
    # a failed test leaves the WAL to look at; a passed one has shipped all of it
    wal = lake["cwd"] / ".lakeinfer-ledger"
    assert not [p for p in wal.rglob("*.wal")], "the drained server left WAL segments behind"


def test_replay_gives_identical_rows_and_a_candidates_changed_labels(lake: dict[str, Any], onnx_model: Trained,
                                                                     onnx_zipmap_model: Trained, X: Any) -> None:
    uri = f"delta:{lake['cwd'] / 'ledger'}"
    features = X.to_numpy(np.float64)
    with ledger_server(onnx_model, "--ledger", uri, "--ledger-interval", "0.3", "--workers", "1",
                       env=lake["env"], cwd=lake["cwd"], grpc=False) as (server, _):
        client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
        for start in range(0, 300, 50):
            client.infer("rf", column_tensors(triton_http, features[start:start + 50], FEATURES))
        server.stop()
    same = run_cli("replay", "--ledger", uri, "--model", onnx_model.path, *onnx_model.cli, "--json",
                   env=lake["env"])
    assert same.returncode == 0, same.stderr
    summary = json.loads(same.stdout)
    assert summary["rows"] == 300 and summary["identical"] == 300 and summary["changed_labels"] == 0
    some = run_cli("replay", "--ledger", uri, "--model", onnx_model.path, *onnx_model.cli, "--json",
                   "--where", "row < 10", "--snapshot", "0", env=lake["env"])  # the first commit's, rows 0-9 of each
    assert some.returncode == 0, some.stderr
    assert json.loads(some.stdout)["identical"] == json.loads(some.stdout)["rows"] > 0
    out = lake["cwd"] / "side-by-side"
    other = run_cli("replay", "--ledger", uri, "--model", onnx_zipmap_model.path, *onnx_zipmap_model.cli, "--json",
                    "--output", out, env=lake["env"])
    assert other.returncode == 0, other.stderr
    summary = json.loads(other.stdout)
    expected = int(np.sum(onnx_zipmap_model.labels[:300] != onnx_model.labels[:300]))  # type: ignore[index]
    assert summary["rows"] == 300 and summary["changed_labels"] == expected
    assert summary["identical"] < 300 and summary["first_differences"]
    side = pads.dataset(out).to_table()
    assert side.num_rows == 300 and {"logged_prediction", "new_prediction"} <= set(side.column_names)


def test_a_ledger_that_cannot_be_written_turns_readiness_false(lake: dict[str, Any], onnx_model: Trained,
                                                               X: Any) -> None:
    blocker = lake["cwd"] / "not-a-folder"
    blocker.write_text("a file where the table's folder would be")
    uri = f"delta:{blocker / 'ledger'}"
    features = X.to_numpy(np.float64)
    with ledger_server(onnx_model, "--ledger", uri, "--ledger-interval", "0.2", "--workers", "1",
                       env=lake["env"], cwd=lake["cwd"], grpc=False) as (server, _):
        client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
        client.infer("rf", column_tensors(triton_http, features[:3], FEATURES))  # saved in the WAL: a 200
        _until(lambda: httpx.get(server.url + "/v2/health/ready").status_code == 503, what="readiness false")
        refused = httpx.post(server.url + "/v2/models/rf/infer", json={"inputs": [
            {"name": name, "shape": [1], "datatype": "FP64", "data": [1.0]} for name in FEATURES]})
        assert refused.status_code == 503 and "ledger" in refused.json()["error"]
        assert "lakeinfer_ledger_ready 0.0" in httpx.get(server.url + "/metrics").text


def test_the_stream_logs_exactly_the_committed_outputs_through_kill_9(broker: str, lake: dict[str, Any]) -> None:
    import joblib

    from tests.kafka_helpers import consume, create_topics, produce, records, stream_cli
    from tests.slow_model import SlowEcho

    model = lake["cwd"] / "echo.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=0.1), model)
    suffix = os.urandom(4).hex()
    source, sink = f"in-{suffix}", f"out-{suffix}"
    create_topics(broker, source, sink)
    total = 2000
    produce(broker, source, records(total))
    uri = f"delta:{lake['cwd'] / 'stream-ledger'}"
    args = ["--model", model, "--trust-model", "--features", ",".join(FEATURES), "--bootstrap-servers", broker,
            "--input-topic", source, "--output-topic", sink, "--group-id", f"g-{source}", "--keep", "id",
            "--max-batch-size", "100", "--exactly-once", "--max-poll-interval-ms", "10000",
            "--ledger", uri, "--ledger-interval", "0.3", "--ledger-wal", lake["cwd"] / "wal"]
    first = stream_cli(*args)
    _until(lambda: first.poll() is not None or len(consume(broker, sink, expect=300, timeout=2, read_committed=False,
                                                           settle=0)) >= 300, timeout=60, what="300 outputs")
    assert first.poll() is None, first.communicate()[1]
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = stream_cli(*args)
    got = consume(broker, sink, expect=total, timeout=120, settle=2)
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    outputs = {json.loads(m.value())["id"]: json.loads(m.value())["prediction"] for m in got}
    assert len(got) == total == len(outputs)
    table = read_ledger(uri, lake).to_pylist()
    positions = [(r["topic"], r["partition"], r["offset"]) for r in table]
    assert len(positions) == len(set(positions)) == total, "each committed output in the ledger exactly once"
    assert {r["id"]: r["prediction"] for r in table} == outputs
    assert all(r["topic"] == source and r["received_at"] is not None for r in table)
