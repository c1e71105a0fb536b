"""One model, every mode, the same rows: generated tables (nulls, NaN, +-Infinity, empty and one-row
batches, narrow and wide) through the local engine (in-process and worker processes), the Spark
engine, the Ray engine, the server (v2 and records) and the Kafka stream. Every mode must give the framework's own
predictions for the good rows and the same verdict, naming the same column, for every bad row."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lakeinfer
from lakeinfer.ray.session import ray_session
from lakeinfer.spark.scoring import score
from lakeinfer.spark.session import session
from tests.conftest import FEATURES, Trained, read_output
from tests.kafka_helpers import create_topics, produce, stream_cli
from tests.serving import Server, serving

NAN, INF = float("nan"), float("inf")
# multiples of 1/1024: exact in float32, JSON and Parquet alike
FINITE = st.integers(-4096, 4096).map(lambda i: i / 1024)
VALUE = st.one_of(FINITE, FINITE, FINITE, FINITE, st.sampled_from([None, NAN, INF, -INF]))


@st.composite
def tables(draw: Any) -> tuple[pa.Table, int]:
    rows = draw(st.sampled_from([0, 1, 2, 7, 33]))
    extra = draw(st.sampled_from([0, 0, 1, 24]))  # narrow, or wide with columns the model never reads
    columns: dict[str, pa.Array] = {"id": pa.array(range(rows), pa.int64())}
    for name in FEATURES:
        columns[name] = pa.array(draw(st.lists(VALUE, min_size=rows, max_size=rows)), pa.float64())
    for j in range(extra):
        columns[f"x{j}"] = pa.array([float(j)] * rows, pa.float64())
    batch_size = draw(st.integers(1, max(1, rows)))
    return pa.table(columns), batch_size


def _verdicts(table: pa.Table) -> list[str | None]:
    """The expected verdict per row: None for a good row, else the first bad column and its value."""
    words = {None: "null"}
    out: list[str | None] = []
    for row in table.select(FEATURES).to_pylist():
        reason = None
        for name in FEATURES:
            value = row[name]
            if value is None or math.isnan(value) or math.isinf(value):
                word = words.get(value) if value is None else ("NaN" if math.isnan(value) else
                                                               "Infinity" if value > 0 else "-Infinity")
                reason = f"feature column '{name}' is {word}"
                break
        out.append(reason)
    return out


def _expected(model: Trained, table: pa.Table, verdicts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """The framework's own predictions (onnxruntime) for the good rows."""
    import onnxruntime as ort

    good = [i for i, v in enumerate(verdicts) if v is None]
    x = np.array([[table.column(f)[i].as_py() for f in FEATURES] for i in good], np.float32).reshape(-1, 5)
    session_ = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    if not len(x):
        return np.zeros(0, np.int64), np.zeros((0, 3))
    labels, proba = session_.run(None, {session_.get_inputs()[0].name: x})
    return labels, proba


class Modes:
    """The long-lived parts: a Spark session, a Ray, a server, a broker with a running scorer."""

    def __init__(self, model: Trained, folder: Path, broker: str) -> None:
        self.model = model
        self.folder = folder
        self.spark = session("local[1]", {"spark.sql.shuffle.partitions": "1"})
        self._ray_cm = ray_session(None)  # a private Ray that every Ray job of the module joins
        self._ray_cm.__enter__()
        self._server_cm = serving("--model", model.path, *model.cli, "--name", "rf")
        self.server: Server = self._server_cm.__enter__()
        self.broker = broker
        suffix = uuid.uuid4().hex[:8]
        self.topics = (f"in-{suffix}", f"out-{suffix}", f"dlq-{suffix}")
        create_topics(self.broker, *self.topics, partitions=2)
        self.stream = stream_cli("--model", model.path, *model.cli, "--bootstrap-servers", self.broker,
                                 "--input-topic", self.topics[0], "--output-topic", self.topics[1],
                                 "--dead-letter-topic", self.topics[2], "--group-id", f"g-{suffix}",
                                 "--keep", "key_id", "--max-batch-size", "16")
        self.received: dict[bytes, tuple[str, dict[str, Any]]] = {}
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer({"bootstrap.servers": self.broker, "group.id": f"check-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        consumer.subscribe([self.topics[1], self.topics[2]])
        try:
            while not self._stop.is_set():
                for m in consumer.consume(100, 0.2):
                    if m.error() is None:
                        self.received[m.key()] = (m.topic(), json.loads(m.value()))
        finally:
            consumer.close()

    def wait_for(self, keys: list[bytes], timeout: float = 60) -> dict[bytes, tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stream.poll() is not None:
                raise AssertionError(f"the stream exited: {self.stream.stderr.read()}")  # type: ignore[union-attr]
            if all(k in self.received for k in keys):
                return {k: self.received[k] for k in keys}
            time.sleep(0.05)
        missing = [k for k in keys if k not in self.received]
        raise AssertionError(f"the stream did not answer {len(missing)} of {len(keys)} records")

    def close(self) -> None:
        self._stop.set()
        self._reader.join(10)
        self.stream.terminate()
        self.stream.communicate(timeout=60)
        self._server_cm.__exit__(None, None, None)
        self.spark.stop()
        self._ray_cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def modes(onnx_model: Trained, broker: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    parts = Modes(onnx_model, tmp_path_factory.mktemp("modes"), broker)
    yield parts
    parts.close()


def _as_lists(column: list[Any]) -> list[Any]:
    return [None if v is None else list(v) if isinstance(v, list | np.ndarray) else v for v in column]


def _check(mode: str, predictions: list[Any], probabilities: list[Any], verdicts: list[str | None],
           labels: np.ndarray, proba: np.ndarray) -> None:
    """Good rows: the framework's labels and probabilities (1e-9); bad rows: nothing scored."""
    assert len(predictions) == len(verdicts), mode
    good = 0
    for i, verdict in enumerate(verdicts):
        if verdict is None:
            assert predictions[i] == labels[good], (mode, i)
            np.testing.assert_allclose(probabilities[i], proba[good], rtol=0, atol=1e-9, err_msg=mode)
            good += 1
        else:
            assert predictions[i] is None and probabilities[i] is None, (mode, i, verdict)


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(example=tables())
def test_every_mode_gives_the_same_answers(modes: Modes, tmp_path: Path, example: tuple[pa.Table, int]) -> None:
    table, batch_size = example
    model = modes.model
    verdicts = _verdicts(table)
    labels, proba = _expected(model, table, verdicts)
    bad = [i for i, v in enumerate(verdicts) if v is not None]
    tag = uuid.uuid4().hex[:8]
    data = tmp_path / f"in-{tag}.parquet"
    # at least two row groups, so that two worker processes each get a unit
    pq.write_table(table, data, row_group_size=max(1, min(batch_size, -(-table.num_rows // 2))))

    # local engine, in-process and in worker processes: null predictions for bad rows
    for workers in (1, 2):
        out = tmp_path / f"local-{workers}-{tag}"
        summary = lakeinfer.batch(str(data), str(out), model=str(model.path), features=FEATURES, keep=["id"],
                                  on_error="null", workers=workers, batch_size=batch_size, unit_rows=1)
        assert summary.rows == table.num_rows
        scored = read_output(out)
        _check(f"local x{workers}", scored["prediction"].astype(object).where(scored["prediction"].notna(), None)
               .tolist(), _as_lists(scored["probability"].tolist()), verdicts, labels, proba)
    # the Ray engine: its actors score the same units
    out = tmp_path / f"ray-{tag}"
    summary = lakeinfer.batch(str(data), str(out), model=str(model.path), features=FEATURES, keep=["id"],
                              on_error="null", workers=2, batch_size=batch_size, unit_rows=1, engine="ray")
    assert summary.rows == table.num_rows
    scored = read_output(out)
    _check("ray", scored["prediction"].astype(object).where(scored["prediction"].notna(), None).tolist(),
           _as_lists(scored["probability"].tolist()), verdicts, labels, proba)
    # ... and `fail` names the first bad row and its column, as every other mode must
    if bad:
        with pytest.raises(lakeinfer.BadRecordError) as caught:
            lakeinfer.batch(str(data), str(tmp_path / f"fail-{tag}"), model=str(model.path), features=FEATURES,
                            batch_size=batch_size)
        assert f"row {bad[0]}: {verdicts[bad[0]]}" in str(caught.value)

    # the Spark engine, over the same Arrow rows
    df = modes.spark.createDataFrame(table) if table.num_rows else None
    if df is not None:
        rows = score(df, str(model.path), features=FEATURES, keep=["id"], on_error="null").toArrow()
        rows = rows.sort_by("id")
        _check("spark", rows.column("prediction").to_pylist(), rows.column("probability").to_pylist(),
               verdicts, labels, proba)

    # the server: a request with a bad row is a 400 naming its first bad row and column
    columns = [{"name": f, "shape": [table.num_rows], "datatype": "FP64",
                "data": [v if v is not None else NAN for v in table.column(f).to_pylist()]} for f in FEATURES]
    v2 = httpx.post(f"{modes.server.url}/v2/models/rf/infer", content=json.dumps({"inputs": columns}), timeout=30)
    instances = table.select(FEATURES).to_pylist()
    records = httpx.post(f"{modes.server.url}/v1/models/rf/predict",
                         content=json.dumps({"instances": instances}), timeout=30) if instances else None
    if bad:
        # a v2 tensor has no null: a null sent as NaN is judged as NaN there
        first_column = verdicts[bad[0]].split("'")[1]  # type: ignore[union-attr]
        assert v2.status_code == 400 and f"row {bad[0]}: feature column '{first_column}' is" in v2.json()["error"]
        assert records is not None and records.status_code == 400, records.text if records else None
        assert records.json()["error"].startswith(f"instances[{bad[0]}]: {verdicts[bad[0]]}")
    else:
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        width = outputs["probability"]["shape"][1] if table.num_rows else 3
        prob = np.array(outputs["probability"]["data"]).reshape(-1, width)
        _check("v2", outputs["prediction"]["data"], list(prob), verdicts, labels, proba)
        if records is not None:
            assert records.status_code == 200, records.text
            served = records.json()["predictions"]
            _check("records", [p["prediction"] for p in served], [p["probability"] for p in served],
                   verdicts, labels, proba)

    # the Kafka stream: good rows out, bad rows to the dead-letter topic with the same reason
    if table.num_rows:
        keys = [f"{tag}-{i}".encode() for i in range(table.num_rows)]
        messages = [(k, json.dumps({"key_id": i, **row}).encode()) for i, (k, row) in enumerate(zip(keys, instances, strict=True))]
        produce(modes.broker, modes.topics[0], messages)
        got = modes.wait_for(keys)
        predictions, probabilities = [], []
        for i, key in enumerate(keys):
            topic, value = got[key]
            if topic == modes.topics[2]:
                assert value["error"] == verdicts[i], (i, value)
                predictions.append(None)
                probabilities.append(None)
            else:
                assert value["key_id"] == i
                predictions.append(value["prediction"])
                probabilities.append(value["probability"])
        _check("stream", predictions, probabilities, verdicts, labels, proba)
