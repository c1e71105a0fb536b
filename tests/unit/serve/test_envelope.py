"""The one request path: each error's status from one table, for HTTP and gRPC, and the hook point
every answered request passes, checked on a real app (REST and gRPC) over a real model."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from starlette.testclient import TestClient

from lakeinfer.errors import ConfigError, InputError, LakeinferError, RecordsError, SchemaError
from lakeinfer.runtime import PipelineRecipe
from lakeinfer.runtime.batcher import Overloaded
from lakeinfer.serve.app import create_app
from lakeinfer.serve.config import ServeConfig
from lakeinfer.serve.envelope import (
    STATUS,
    Answered,
    BodyTooLarge,
    Envelope,
    ModelUnavailable,
    Unauthorized,
    UnknownModel,
)
from tests.conftest import FEATURES, Trained
from tests.serving import free_port


class _Metrics:
    def __init__(self) -> None:
        self.requests: list[tuple[Any, ...]] = []
        self.errors: list[tuple[Any, ...]] = []

    def request(self, *args: Any) -> None:
        self.requests.append(args)

    def error(self, *args: Any) -> None:
        self.errors.append(args)


def _envelope(retry_s: float = 1.0, key: str | None = None) -> tuple[Envelope, _Metrics]:
    metrics = _Metrics()
    config = SimpleNamespace(timeout_ms=250.0, max_body_bytes=100, retry_s=retry_s)
    return Envelope(config, metrics, key), metrics  # type: ignore[arg-type]


@pytest.mark.parametrize(("error", "status", "code"), [
    (InputError("bad"), 400, "INVALID_ARGUMENT"),
    (SchemaError("bad"), 400, "INVALID_ARGUMENT"),
    (RecordsError("bad"), 400, "INVALID_ARGUMENT"),
    (Unauthorized("who"), 401, "UNAUTHENTICATED"),
    (UnknownModel("which"), 404, "NOT_FOUND"),
    (BodyTooLarge("big"), 413, "RESOURCE_EXHAUSTED"),
    (LakeinferError("ours"), 500, "INTERNAL"),
    (ConfigError("ours"), 500, "INTERNAL"),
    (Overloaded("full"), 503, "UNAVAILABLE"),
    (ModelUnavailable("loading"), 503, "UNAVAILABLE"),
    (TimeoutError(), 504, "DEADLINE_EXCEEDED"),
])
def test_each_error_has_one_http_status_and_one_grpc_code(error: BaseException, status: int, code: str) -> None:
    envelope, _ = _envelope()
    failed = envelope.failure(error, "test")
    assert (failed.status, failed.code) == (status, code)
    assert (status, code) in STATUS.values()
    if status == 503:
        assert failed.headers == {"Retry-After": "1"}
    if status == 504:
        assert failed.message == "no answer within the 250 ms timeout"


def test_a_bug_is_a_500_without_its_text() -> None:
    envelope, _ = _envelope()
    failed = envelope.failure(ValueError("secret detail"), "test")
    assert (failed.status, failed.message) == (500, "internal error (ValueError)")


@pytest.mark.parametrize(("retry_s", "header"), [(0.25, "1"), (1.0, "1"), (2.5, "3"), (30.0, "30")])
def test_retry_after_is_the_retry_window_in_whole_seconds(retry_s: float, header: str) -> None:
    envelope, _ = _envelope(retry_s)
    assert envelope.failure(Overloaded("full"), "t").headers["Retry-After"] == header


def test_key_and_size_checks() -> None:
    envelope, _ = _envelope(key="s3cret")
    envelope.check_key("s3cret", "x")
    envelope.check_key(b"s3cret", "x")
    for wrong in (None, "", "s3cre", b"other"):
        with pytest.raises(Unauthorized, match=r"send x"):
            envelope.check_key(wrong, "x")
    envelope.check_size(100)
    with pytest.raises(BodyTooLarge, match="of 101 bytes is over the 100-byte limit"):
        envelope.check_size(101, declared=True)


def test_answered_counts_once_and_a_failing_hook_fails_nothing() -> None:
    envelope, metrics = _envelope()
    seen: list[Answered] = []

    def broken(answer: Answered) -> None:
        raise RuntimeError("hook bug")

    envelope.hooks.extend([broken, seen.append])
    envelope.answered(Answered("rest", "infer", "rf", 400, "INVALID_ARGUMENT", 0.01))
    envelope.answered(Answered("grpc", "infer", "rf", 200, "OK", 0.01))
    assert [a.transport for a in seen] == ["rest", "grpc"]
    assert metrics.errors == [("400", "rf")]
    assert [r[:2] for r in metrics.requests] == [("infer", "400"), ("grpc_infer", "OK")]


def test_every_answered_request_reaches_the_hook_rest_and_grpc(onnx_model: Trained, X: Any) -> None:
    seen: list[Answered] = []
    grpc_port = free_port()
    config = ServeConfig(recipe=PipelineRecipe(str(onnx_model.path), features=tuple(FEATURES)), name="rf",
                         grpc_port=grpc_port, port=free_port())
    rows = X.to_numpy(np.float32)[:3]
    with TestClient(create_app(config, hooks=[seen.append])) as client:
        deadline = time.monotonic() + 60
        while client.get("/v2/health/ready").status_code != 200:  # the model loads off the event loop
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.05)
        body = {"id": "r1", "inputs": [{"name": f, "shape": [3], "datatype": "FP32", "data": rows[:, i].tolist()}
                                       for i, f in enumerate(FEATURES)]}
        assert client.post("/v2/models/rf/infer", json=body).status_code == 200
        records = {"instances": [dict(zip(FEATURES, map(float, row), strict=True)) for row in rows[:2]]}
        assert client.post("/v1/models/rf/predict", json=records).status_code == 200
        assert client.post("/v2/models/nope/infer", json=body).status_code == 404
        grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensor = triton_grpc.InferInput("x", [3, len(FEATURES)], "FP32")
        tensor.set_data_from_numpy(rows)
        grpc.infer("rf", [tensor], request_id="g1")
        grpc.close()
    by = {(a.transport, a.endpoint, a.status): a for a in seen}
    rest = by[("rest", "infer", 200)]
    assert rest.model == "rf" and rest.request_id == "r1" and rest.inputs is not None and rest.outputs is not None
    assert rest.inputs.num_rows == rest.outputs.num_rows == 3
    np.testing.assert_array_equal(rest.outputs.column("prediction").to_numpy(), onnx_model.labels[:3])
    predict = by[("rest", "predict", 200)]
    assert predict.inputs is not None and predict.inputs.num_rows == 2
    assert by[("rest", "infer", 404)].model == "" and by[("rest", "infer", 404)].outputs is None
    grpc_answer = by[("grpc", "infer", 200)]
    assert grpc_answer.code == "OK" and grpc_answer.request_id == "g1" and grpc_answer.outputs is not None
    np.testing.assert_array_equal(grpc_answer.outputs.column("prediction").to_numpy(), onnx_model.labels[:3])
    assert ("rest", "ready", 200) in by
