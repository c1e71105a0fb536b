"""lakeinfer serve --grpc-port: the v2 protocol over gRPC on 127.0.0.1, spoken by tritonclient.grpc."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from tests.conftest import FEATURES, Trained, run_cli
from tests.serving import column_tensors, free_port, serving

triton = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as pb  # noqa: E402  (tritonclient's own messages, as a client has them)
from tritonclient.utils import InferenceServerException  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def grpc_server(onnx_model: Trained):  # type: ignore[no-untyped-def]
    port = free_port()
    with serving("--model", onnx_model.path, *onnx_model.cli, "--name", "rf", "--grpc-port", port) as server:
        server.grpc_port = port  # type: ignore[attr-defined]
        yield server


def _client(server) -> triton.InferenceServerClient:  # type: ignore[no-untyped-def]
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")


def _fails(call, code: str) -> str:  # type: ignore[no-untyped-def]
    """The message of the gRPC error ``call()`` raises, after checking its status."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{code}", (caught.value.status(), caught.value.message())
    message = caught.value.message()
    assert "Traceback" not in message
    return message


def _raw_call(port: int, request: pb.ModelInferRequest, *, new_connection: bool = False):  # type: ignore[no-untyped-def]
    """ModelInfer over a bare channel: the response and the call (its trailing metadata names the worker)."""
    options = [("grpc.use_local_subchannel_pool", 1)] if new_connection else []
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        infer = channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        return infer.with_call(request, timeout=30)


def test_tritonclient_grpc_health_and_metadata(grpc_server) -> None:  # type: ignore[no-untyped-def]
    client = _client(grpc_server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("rf")
    assert client.get_server_metadata().name == "lakeinfer"
    meta = client.get_model_metadata("rf", as_json=True)
    assert meta["name"] == "rf" and meta["versions"] == ["1"] and meta["platform"] == "lakeinfer_onnx"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [(f, "FP32", ["-1"]) for f in FEATURES]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("prediction", "INT64"), ("probability", "FP64")]
    rest = httpx.get(f"{grpc_server.url}/v2/models/rf").json()  # the same as REST's, shapes as int64 strings
    for key in ("inputs", "outputs"):
        assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[key]] == rest[key]


def test_tritonclient_grpc_infer_equals_the_framework_and_rest(grpc_server, onnx_model: Trained, X) -> None:  # type: ignore[no-untyped-def]
    client = _client(grpc_server)
    rows = X.to_numpy(np.float32)[:50]
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer("rf", [tensor], request_id="r1",
                          outputs=[triton.InferRequestedOutput("prediction"), triton.InferRequestedOutput("probability")])
    assert result.get_response().id == "r1"
    np.testing.assert_array_equal(result.as_numpy("prediction"), onnx_model.labels[:50])
    np.testing.assert_allclose(result.as_numpy("probability"), onnx_model.probability[:50], atol=1e-6)
    # one tensor per column, FP64; only the outputs asked for come back
    columns = column_tensors(triton, rows, FEATURES)
    only = client.infer("rf", columns, outputs=[triton.InferRequestedOutput("prediction")])
    assert [o.name for o in only.get_response().outputs] == ["prediction"]
    np.testing.assert_array_equal(only.as_numpy("prediction"), onnx_model.labels[:50])
    # the REST answer for the same rows
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}
    rest = httpx.post(f"{grpc_server.url}/v2/models/rf/infer", json=body)
    assert rest.status_code == 200, rest.text
    by_name = {o["name"]: o for o in rest.json()["outputs"]}
    assert result.as_numpy("prediction").tolist() == by_name["prediction"]["data"]
    assert result.as_numpy("probability").ravel().tolist() == by_name["probability"]["data"]
    assert list(result.as_numpy("probability").shape) == by_name["probability"]["shape"]


def test_typed_contents_are_read_too(grpc_server, onnx_model: Trained, X) -> None:  # type: ignore[no-untyped-def]
    rows = X.to_numpy(np.float64)[:7]
    request = pb.ModelInferRequest(model_name="rf")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=list(rows.shape))
    tensor.contents.fp64_contents.extend(rows.ravel().tolist())
    response, _ = _raw_call(grpc_server.grpc_port, request)
    labels = np.frombuffer(response.raw_output_contents[0], dtype="<i8")
    np.testing.assert_array_equal(labels, onnx_model.labels[:7])


def test_errors_have_grpc_codes_and_rest_messages(grpc_server) -> None:  # type: ignore[no-untyped-def]
    client = _client(grpc_server)
    rows = np.full((3, 5), 0.5, dtype=np.float32)
    rows[1, 2] = np.nan
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    assert _fails(lambda: client.infer("rf", [tensor]), "INVALID_ARGUMENT") == "row 1: feature column 'f2' is NaN"
    # REST's message for the same rows (json.dumps writes the NaN token)
    body = {"inputs": [{"name": "input", "shape": [3, 5], "datatype": "FP32", "data": rows.ravel().tolist()}]}
    rest = httpx.post(f"{grpc_server.url}/v2/models/rf/infer", content=json.dumps(body))
    assert rest.status_code == 400 and rest.json()["error"] == "row 1: feature column 'f2' is NaN"

    ok = triton.InferInput("input", [1, 5], "FP32")
    ok.set_data_from_numpy(np.ones((1, 5), np.float32))
    assert "unknown model 'other'" in _fails(lambda: client.infer("other", [ok]), "NOT_FOUND")
    assert "unknown model 'other'" in _fails(lambda: client.get_model_metadata("other"), "NOT_FOUND")
    asked = [triton.InferRequestedOutput("margin")]
    assert "output 'margin' is not one of the model's outputs" in _fails(
        lambda: client.infer("rf", [ok], outputs=asked), "INVALID_ARGUMENT")
    narrow = triton.InferInput("x", [1, 3], "FP32")
    narrow.set_data_from_numpy(np.ones((1, 3), np.float32))
    assert "missing feature column 'f0'" in _fails(lambda: client.infer("rf", [narrow]), "INVALID_ARGUMENT")

    # what tritonclient would not send: each a one-line INVALID_ARGUMENT naming the input
    def bare(datatype: str, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="rf", raw_input_contents=[raw])
        request.inputs.add(name="x", datatype=datatype, shape=shape)
        return request

    cases = [
        (bare("FP32", [2, 5], b"\0" * 12), "input 'x': 12 bytes of raw_input_contents for shape [2, 5] of FP32"),
        (bare("FP99", [1, 5], b""), "input 'x': unknown datatype 'FP99'"),
        (pb.ModelInferRequest(model_name="rf"), "request: 'inputs' is empty"),
    ]
    for request, phrase in cases:
        with pytest.raises(grpc.RpcError) as caught:
            _raw_call(grpc_server.grpc_port, request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert phrase in caught.value.details(), (phrase, caught.value.details())


def test_two_workers_both_answer_grpc(sklearn_model: Trained, X, tmp_path: Path) -> None:
    """Under --workers 2 both processes serve the gRPC port; BYTES and FP64 outputs decode too."""
    spec = tmp_path / "job.toml"
    spec.write_text(f'[model]\npath = "{sklearn_model.path}"\ntrust = true\n\n'
                    '[[pipeline.steps]]\nop = "model"\n\n'
                    '[[pipeline.steps]]\nop = "label_map"\nlabels = ["low", "mid", "high"]\n')
    port = free_port()
    rows = X.to_numpy(np.float64)[:20]
    tiers = np.array(["low", "mid", "high"])[sklearn_model.labels[:20]]
    with serving("--spec", spec, "--name", "tiers", "--workers", "2", "--grpc-port", port):
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        tensor = triton.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        result = client.infer("tiers", [tensor])
        assert result.get_output("prediction").datatype == "BYTES"
        assert [v.decode() for v in result.as_numpy("prediction")] == tiers.tolist()
        assert result.get_output("probability").datatype == "FP64"
        np.testing.assert_allclose(result.as_numpy("probability"), sklearn_model.probability[:20], atol=1e-12)

        request = pb.ModelInferRequest(model_name="tiers", raw_input_contents=[rows[:3].tobytes()])
        request.inputs.add(name="input", datatype="FP64", shape=[3, 5])
        workers: set[str] = set()
        for _ in range(200):  # each call over a new connection, which the kernel gives to either worker
            response, call = _raw_call(port, request, new_connection=True)
            assert [o.name for o in response.outputs] == ["prediction", "probability"]
            workers.add(dict(call.trailing_metadata())["x-lakeinfer-worker"])
            if len(workers) == 2:
                break
        assert len(workers) == 2, f"one worker took every call: {workers}"


def test_a_busy_or_shared_grpc_port_is_one_line(onnx_model: Trained) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--model", onnx_model.path, *onnx_model.cli, "--port", str(free_port()),
                         "--grpc-port", str(port))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lakeinfer: error: port {port} on 127.0.0.1 is in use"), lines
    assert "--grpc-port" in lines[0]
    same = run_cli("serve", "--model", onnx_model.path, *onnx_model.cli, "--port", "8123", "--grpc-port", "8123")
    assert same.returncode == 1 and "gRPC needs a port of its own" in same.stderr, same.stderr


def test_full_queue_timeout_and_api_key(tmp_path: Path) -> None:
    import joblib

    from tests.slow_model import SlowEcho

    path = tmp_path / "echo.joblib"
    joblib.dump(SlowEcho(len(FEATURES), 0.6, 0.0), path)
    port = free_port()
    args = ["--model", path, "--trust-model", "--features", ",".join(FEATURES), "--name", "echo", "--grpc-port", port,
            "--timeout-ms", "1000", "--max-queue", "1", "--max-batch-size", "1", "--api-key-env", "TEST_KEY"]
    with serving(*args, env={"TEST_KEY": "s3cret"}):
        key = {"authorization": "Bearer s3cret"}
        row = triton.InferInput("x", [1, 5], "FP64")
        row.set_data_from_numpy(np.full((1, 5), 2.0))

        def call(_: int) -> str:
            client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
            try:
                assert client.infer("echo", [row], headers=key).as_numpy("prediction").tolist() == [20.0]
                return "OK"
            except InferenceServerException as exc:
                assert "Traceback" not in exc.message()
                return str(exc.status()).removeprefix("StatusCode.")

        with ThreadPoolExecutor(6) as pool:
            codes = set(pool.map(call, range(6)))
        assert {"OK", "UNAVAILABLE"} <= codes <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, codes
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        _fails(lambda: client.infer("echo", [row], headers=key, client_timeout=0.2), "DEADLINE_EXCEEDED")
        assert "API key" in _fails(lambda: client.infer("echo", [row]), "UNAUTHENTICATED")
        assert client.is_server_ready()  # the health probes need no key


def test_grpc_model_that_names_no_features(onnx_model: Trained, X) -> None:  # type: ignore[no-untyped-def]
    """Served without --features: its one input tensor X [-1, 5], over gRPC as over REST."""
    port = free_port()
    with serving("--model", onnx_model.path, "--name", "rf", "--grpc-port", port) as server:
        start = server.proc.stderr.readline().decode()  # type: ignore[union-attr]
        assert start == f"serving rf (onnx) on http://127.0.0.1:{server.port}, gRPC {port}, 1 worker\n"
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        meta = client.get_model_metadata("rf", as_json=True)
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("X", "FP32", ["-1", "5"])]
        rows = X.to_numpy(np.float32)[:40].copy()
        tensor = triton.InferInput("X", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer("rf", [tensor])
        np.testing.assert_array_equal(result.as_numpy("prediction"), onnx_model.labels[:40])
        np.testing.assert_allclose(result.as_numpy("probability"), onnx_model.probability[:40], atol=1e-6)
        rows[3, 1] = np.nan
        tensor.set_data_from_numpy(rows)
        message = _fails(lambda: client.infer("rf", [tensor]), "INVALID_ARGUMENT")
        assert message.startswith("row 3: "), message
