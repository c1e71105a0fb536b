"""The tensorflow (SavedModel folder) and keras (.keras file) flavors in batch (in-process and in
worker processes) and serve (REST, gRPC, records; two workers), each answer equal to TensorFlow's
own call of the model. The models are built here: a Keras Sequential exported with
``model.export``, a ``tf.Module`` with two signatures of several named inputs and outputs, and a
functional Keras model of a list-column input and a scalar input saved as ``.keras``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

import lakeinfer
from lakeinfer.errors import SchemaError
from lakeinfer.models import detect_flavor
from tests.conftest import read_output, run_cli
from tests.kafka_helpers import consume, create_topics, produce, stream_cli
from tests.serving import ROOT, Server, free_port

ROWS, FILES = 1500, 4
ATOL = 1e-6


class _Scorer(tf.Module):
    """Two signatures: numbers of three shapes and types in, two outputs; a string and a double out."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(tf.random.stateless_normal((3, 2), seed=(1, 2)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="a"),
                                  tf.TensorSpec([None, 3], tf.float32, name="b"),
                                  tf.TensorSpec([None], tf.int64, name="n")])
    def score(self, a: tf.Tensor, b: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"total": tf.tanh(a) + tf.reduce_sum(b, axis=1) * tf.cast(n, tf.float32),
                "proj": tf.nn.softmax(tf.matmul(b, self.w))}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float64, name="x"),
                                  tf.TensorSpec([None], tf.string, name="s")])
    def other(self, x: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scaled": x * 2.5, "length": tf.strings.length(s)}


@dataclass
class Built:
    data: Path  # a folder of Parquet files, every model's columns and an id
    table: pa.Table
    exported: str  # the Keras Sequential's model.export folder
    module: str  # the tf.Module's SavedModel
    functional: str  # the functional model's .keras file
    expected: dict[str, dict[str, np.ndarray]]  # case -> output -> TensorFlow's own answer, by id


def _vectors(matrix: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _matrix(column: Any, dtype: str) -> np.ndarray:
    return np.stack(column.to_numpy(zero_copy_only=False)).astype(dtype)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("tf")
    keras.utils.set_random_seed(7)
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                                   keras.layers.Dense(3)])
    sequential.export(str(root / "exported"), verbose=False)
    module = _Scorer()
    tf.saved_model.save(module, str(root / "module"), signatures={"serving_default": module.score,
                                                                  "other": module.other})
    vec, scale = keras.Input((5,), name="vec"), keras.Input((1,), name="scale")
    hidden = keras.layers.Dense(8, activation="tanh")(vec)
    logits = keras.layers.Dense(2, name="logits")(keras.layers.Concatenate()([hidden, scale]))
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    functional = keras.Model([vec, scale], [logits, score])
    functional.save(str(root / "functional.keras"))

    rng = np.random.default_rng(3)
    rows = ROWS * FILES
    features = rng.normal(size=(rows, 4))
    columns = {
        "id": np.arange(rows), "a": rng.normal(size=rows), "b": _vectors(rng.normal(size=(rows, 3)).astype("float32")),
        "n": rng.integers(0, 50, rows), "keras_tensor": pa.array(list(features)),
        "vec": pa.array(list(rng.normal(size=(rows, 5)))), "scale": rng.normal(size=rows),
        "x": rng.normal(size=rows), "s": pa.array(["x" * int(k) for k in rng.integers(0, 9, rows)]),
        **{f"f{j}": features[:, j] for j in range(4)},
    }
    table = pa.table(columns)
    data = root / "data"
    data.mkdir()
    for i in range(FILES):
        pq.write_table(table.slice(i * ROWS, ROWS), data / f"part-{i}.parquet")

    # TensorFlow's own answers: the SavedModels' signatures called, the Keras model's predict
    loaded = tf.saved_model.load(str(root / "exported")).signatures["serving_default"]
    kt = _matrix(table["keras_tensor"], "float32")
    served = tf.saved_model.load(str(root / "module")).signatures
    main = served["serving_default"](a=tf.constant(table["a"].to_numpy().astype("float32")),
                                     b=tf.constant(_matrix(table["b"], "float32")), n=tf.constant(table["n"].to_numpy()))
    second = served["other"](x=tf.constant(table["x"].to_numpy().reshape(-1, 1)),
                             s=tf.constant(table["s"].to_numpy(zero_copy_only=False).astype(object)))
    reloaded = keras.saving.load_model(str(root / "functional.keras"))
    predicted = reloaded.predict([_matrix(table["vec"], "float32"),
                                  table["scale"].to_numpy().astype("float32").reshape(-1, 1)], verbose=0)
    expected = {
        "exported": {"output_0": loaded(keras_tensor=tf.constant(kt))["output_0"].numpy()},
        "module": {k: v.numpy() for k, v in main.items()},
        "module-other": {k: v.numpy() for k, v in second.items()},
        "functional": dict(zip(reloaded.output_names, predicted, strict=True)),
    }
    return Built(data, table, str(root / "exported"), str(root / "module"), str(root / "functional.keras"), expected)


# case -> (model attribute, extra options)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "exported": ("exported", {}),
    "module": ("module", {}),
    "module-other": ("module", {"signature": "other"}),
    "functional": ("functional", {}),
    "exported-features": ("exported", {"features": ["f0", "f1", "f2", "f3"]}),
}


def _check(out: Any, expected: dict[str, np.ndarray], rows: np.ndarray | None = None) -> None:
    """Each output column equals TensorFlow's answer (rows: the ids, else every row in order)."""
    for name, want in expected.items():
        want = want if rows is None else want[rows]
        values = out[name]
        got = np.stack(values) if want.ndim == 2 and want.shape[1] > 1 else np.asarray(values, dtype=want.dtype)
        np.testing.assert_allclose(got, want.reshape(got.shape), atol=ATOL, rtol=0, err_msg=name)


def _options(case: str) -> tuple[str, dict[str, Any]]:
    attribute, options = CASES[case]
    return attribute, options


def _expected(built: Built, case: str) -> dict[str, np.ndarray]:
    return built.expected[case.removesuffix("-features")]


def test_flavors_are_detected_and_inspect_lists_the_signatures(built: Built) -> None:
    assert detect_flavor(built.exported) == "tensorflow" and detect_flavor(built.module) == "tensorflow"
    assert detect_flavor(built.functional) == "keras"
    info = lakeinfer.inspect_model(built.module, trust=True)
    assert info["flavor"] == "tensorflow" and info["input_columns"] == ["a", "b", "n"]
    assert [(t["name"], t["dtype"], t["shape"]) for t in info["inputs"]] == [
        ("a", "float32", [None]), ("b", "float32", [None, 3]), ("n", "int64", [None])]
    assert info["extra"]["signatures"] == ["other", "serving_default"]
    assert [t["name"] for t in info["outputs"]] == ["proj", "total"]
    other = lakeinfer.inspect_model(built.module, trust=True, signature="other")
    assert other["input_columns"] == ["s", "x"] and [t["name"] for t in other["outputs"]] == ["length", "scaled"]
    exported = lakeinfer.inspect_model(built.exported, trust=True)  # the lines `lakeinfer inspect` prints
    assert exported["input_columns"] == ["keras_tensor"] and exported["extra"]["notes"] == [
        "signature serve: keras_tensor: float32[N, 4] -> output_0: float32[N, 3]",
        "signature serving_default (scored): keras_tensor: float32[N, 4] -> output_0: float32[N, 3]"]
    keras_info = lakeinfer.inspect_model(built.functional, trust=True)
    assert keras_info["flavor"] == "keras" and keras_info["input_columns"] == ["vec", "scale"]
    assert [t["name"] for t in keras_info["outputs"]] == ["logits", "score"]


@pytest.mark.parametrize("case", list(CASES))
def test_batch_in_process_equals_tensorflow(built: Built, case: str, tmp_path: Path) -> None:
    attribute, options = _options(case)
    summary = lakeinfer.batch(str(built.data), str(tmp_path / "out"), model=getattr(built, attribute), trust=True,
                              keep=["id"], workers=1, batch_size=1000, **options)
    assert summary.rows == ROWS * FILES and summary.rows_skipped == 0
    out = read_output(tmp_path / "out")
    _check(out, _expected(built, case), out["id"].to_numpy())


@pytest.mark.parametrize("case", ["exported", "module-other", "functional"])
def test_batch_in_worker_processes_equals_tensorflow(built: Built, case: str, tmp_path: Path) -> None:
    attribute, options = _options(case)
    chosen = ["--signature", options["signature"]] if "signature" in options else []
    done = run_cli("batch", "--model", getattr(built, attribute), *chosen, "--trust-model", "--input", built.data,
                   "--output", tmp_path / "out", "--keep", "id", "--workers", "2", "--batch-size", "700", "--json",
                   timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == ROWS * FILES and summary["workers"] == 2
    out = read_output(tmp_path / "out")
    _check(out, _expected(built, case), out["id"].to_numpy())


def test_keras_sequential_and_dict_of_inputs_in_process(tmp_path: Path) -> None:
    keras.utils.set_random_seed(11)
    sequential = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(4, activation="relu"),
                                   keras.layers.Dense(2, name="head")])
    sequential.save(str(tmp_path / "sequential.keras"))  # a Sequential has no output_names: its last layer's
    alpha, beta = keras.Input((1,), name="alpha"), keras.Input((2,), name="beta")
    keyed = keras.Model({"alpha": alpha, "beta": beta},
                        keras.layers.Dense(1, name="y")(keras.layers.Concatenate()([alpha, beta])))
    keyed.save(str(tmp_path / "keyed.keras"))
    rng = np.random.default_rng(5)
    x, a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 1)), rng.normal(size=(50, 2))
    table = pa.table({"id": np.arange(50), "x": pa.array(list(x)), "alpha": a[:, 0], "beta": pa.array(list(b))})
    pq.write_table(table, tmp_path / "rows.parquet")
    for name, want in (("sequential", {"head": sequential.predict(x.astype("float32"), verbose=0)}),
                       ("keyed", {"y": keyed.predict({"alpha": a, "beta": b}, verbose=0)})):
        lakeinfer.batch(str(tmp_path / "rows.parquet"), str(tmp_path / name), model=str(tmp_path / f"{name}.keras"),
                        trust=True, keep=["id"])
        out = read_output(tmp_path / name)
        assert list(out.columns) == ["id", *want]
        _check(out, want)


def test_spark_engine_equals_tensorflow(built: Built, tmp_path: Path) -> None:
    # TensorFlow is loaded in Spark's Python workers (forked by its daemon, which never imports it)
    summary = lakeinfer.batch(str(built.data), str(tmp_path / "out"), model=built.module, trust=True, keep=["id"],
                              engine="spark", master="local[1]")
    assert summary.rows == ROWS * FILES
    out = read_output(tmp_path / "out")
    _check(out, built.expected["module"], out["id"].to_numpy())


@pytest.mark.parametrize("attribute", ["module", "functional"])
def test_untrusted_models_are_refused_in_one_line(built: Built, attribute: str, tmp_path: Path) -> None:
    done = run_cli("batch", "--model", getattr(built, attribute), "--input", built.data, "--output", tmp_path / "out")
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "--trust-model" in lines[0], lines


def test_bad_values_follow_the_missing_value_rule(built: Built, tmp_path: Path) -> None:
    rows = built.table.slice(0, 6).to_pylist()
    rows[1]["vec"] = [1.0, float("nan"), 0.0, 0.0, 0.0]  # NaN in a list column
    rows[4]["scale"] = None
    data = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=built.table.schema), data)
    summary = lakeinfer.batch(str(data), str(tmp_path / "out"), model=built.functional, trust=True, keep=["id"],
                              on_error="skip")
    assert (summary.rows, summary.rows_skipped) == (4, 2)
    out = read_output(tmp_path / "out")
    _check(out, built.expected["functional"], out["id"].to_numpy())
    with pytest.raises(lakeinfer.LakeinferError, match="row 1: feature column 'vec' is NaN"):
        lakeinfer.batch(str(data), str(tmp_path / "fail"), model=built.functional, trust=True)
    # an int64 column whose value float32 cannot hold exactly is refused, naming the column
    wide = pa.table({"a": pa.array([1, 2**24 + 1]), "b": _vectors(np.zeros((2, 3), "float32")), "n": [1, 2]})
    pq.write_table(wide, tmp_path / "wide.parquet")
    with pytest.raises(SchemaError, match="column 'a'.*16777217.*float32"):
        lakeinfer.batch(str(tmp_path / "wide.parquet"), str(tmp_path / "wide"), model=built.module, trust=True)


@pytest.fixture(scope="module")
def server(built: Built):  # type: ignore[no-untyped-def]
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "lakeinfer", "serve", "--port", str(port), "--model", f"mod={built.module}",
               "--model", f"seq={built.exported}", "--model", f"fn={built.functional}", "--trust-model",
               "--workers", "2", "--grpc-port", str(grpc_port)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    running = Server(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      env={**os.environ, "PYTHONPATH": path}), port)
    try:
        # three models loaded by the parent and by each of two workers: slow on a busy machine
        running.wait("/v2/health/ready", timeout=240)
        running.grpc_port = grpc_port  # type: ignore[attr-defined]
        yield running
    finally:
        running.stop()


def _inputs(module: Any, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> list[Any]:
    tensors = []
    for name, values in arrays.items():
        tensor = module.InferInput(name, list(values.shape), datatypes[name])
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    return tensors


def test_serve_rest_grpc_and_records_equal_tensorflow(built: Built, server: Any) -> None:
    rows = np.arange(0, 64)
    t = built.table.take(pa.array(rows))
    http = triton_http.InferenceServerClient(url=server.url.removeprefix("http://"))
    grpc = triton_grpc.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    meta = http.get_model_metadata("seq")
    assert meta["platform"] == "lakeinfer_tensorflow" and [i["name"] for i in meta["inputs"]] == ["keras_tensor"]
    assert [(i["name"], i["shape"]) for i in http.get_model_metadata("mod")["inputs"]] == [
        ("a", [-1]), ("b", [-1, -1]), ("n", [-1])]

    module_inputs = {"a": t["a"].to_numpy().astype("float32"), "b": _matrix(t["b"], "float32"),
                     "n": t["n"].to_numpy()}
    types = {"a": "FP32", "b": "FP32", "n": "INT64", "keras_tensor": "FP32", "vec": "FP64", "scale": "FP32"}
    for client, module in ((http, triton_http), (grpc, triton_grpc)):
        result = client.infer("mod", _inputs(module, module_inputs, types))
        _check({k: list(result.as_numpy(k)) for k in ("proj", "total")}, built.expected["module"], rows)
        result = client.infer("seq", _inputs(module, {"keras_tensor": _matrix(t["keras_tensor"], "float32")}, types))
        _check({"output_0": list(result.as_numpy("output_0"))}, built.expected["exported"], rows)
        functional = {"vec": _matrix(t["vec"], "float64"),
                      "scale": t["scale"].to_numpy().astype("float32").reshape(-1, 1)}
        result = client.infer("fn", _inputs(module, functional, types))
        _check({k: list(result.as_numpy(k)) for k in ("logits", "score")}, built.expected["functional"], rows)

    # records: a list column is a JSON list; a [N, 1] output is a plain number
    instances = [{"vec": r["vec"], "scale": r["scale"]} for r in t.to_pylist()]
    answer = httpx.post(f"{server.url}/v1/models/fn/predict", json={"instances": instances}, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert isinstance(predictions[0]["score"], float) and len(predictions[0]["logits"]) == 2
    _check({k: [p[k] for p in predictions] for k in ("logits", "score")}, built.expected["functional"], rows)
    # both workers score, each over a connection of its own (no process hung on a TensorFlow it inherited)
    one = {"instances": instances[:1]}
    pids = set()
    for _ in range(200):
        reply = httpx.post(f"{server.url}/v1/models/fn/predict", json=one, timeout=30)
        assert reply.status_code == 200, reply.text
        # one row alone against the same row in a batch of 64: TensorFlow's kernels may differ in
        # the last float32 bits by batch size
        alone = reply.json()["predictions"][0]
        np.testing.assert_allclose(alone["logits"], predictions[0]["logits"], rtol=0, atol=1e-6)
        assert alone["score"] == pytest.approx(predictions[0]["score"], abs=1e-6)
        pids.add(reply.headers["x-lakeinfer-worker"])
        if len(pids) == 2:
            break
    assert len(pids) == 2


def test_stream_equals_tensorflow(built: Built, broker: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, sink, dlq = f"tf-in-{suffix}", f"tf-out-{suffix}", f"tf-dlq-{suffix}"
    create_topics(broker, source, sink, dlq)
    rows = built.table.slice(0, 300).select(["id", "vec", "scale"]).to_pylist()
    rows[7]["vec"] = rows[7]["vec"][:3]  # a list of the wrong length: a dead letter, the rest scored
    produce(broker, source, ((str(r["id"]).encode(), json.dumps(r).encode()) for r in rows))
    proc = stream_cli("--model", built.functional, "--trust-model", "--bootstrap-servers", broker,
                      "--input-topic", source, "--output-topic", sink, "--dead-letter-topic", dlq,
                      "--keep", "id", "--group-id", f"g-{source}", "--exactly-once", "--transactional-id", f"t-{source}")
    try:
        got = consume(broker, sink, expect=299, timeout=90)
        dead = consume(broker, dlq, expect=1, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    outputs = sorted((json.loads(m.value()) for m in got), key=lambda o: o["id"])
    ids = np.array([o["id"] for o in outputs])
    assert len(outputs) == 299 and 7 not in ids, err[-3000:]
    assert len(dead) == 1 and "vec" in dead[0].value().decode()
    _check({k: [o[k] for o in outputs] for k in ("logits", "score")}, built.expected["functional"], ids)


def test_a_process_with_tensorflow_can_still_load_a_pytorch_export() -> None:
    # TensorFlow and Triton (torch.export's compiler) each carry LLVM: Triton loaded second aborted
    probe = ("from lakeinfer.models.tensorflow import tensorflow; tensorflow(); import torch.export; "
             "from torch.utils._triton import has_triton_package; print(has_triton_package())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
