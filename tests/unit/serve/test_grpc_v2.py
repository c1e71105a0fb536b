"""The v2 gRPC codec on its own: ModelInferRequest to Arrow, Arrow to ModelInferResponse."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("grpc")
from lakeinfer.schema import unpack_features
from lakeinfer.serve import grpc_v2, proto  # noqa: E402
from lakeinfer.serve.v2 import ProtocolError  # noqa: E402

FEATURES = ["a", "b", "c"]


def _request(*inputs: tuple[str, str, list[int]], raw: list[bytes] | None = None):  # type: ignore[no-untyped-def]
    request = proto.ModelInferRequest(model_name="m", raw_input_contents=raw or [])
    tensors = [request.inputs.add(name=n, datatype=d, shape=s) for n, d, s in inputs]
    return request, tensors


def test_typed_contents_per_datatype() -> None:
    request, (a, b, c) = _request(("a", "INT32", [2]), ("b", "BYTES", [2, 1]), ("c", "BOOL", [2]))
    a.contents.int_contents.extend([7, -1])
    b.contents.bytes_contents.extend([b"x", "\u00e9".encode()])
    c.contents.bool_contents.extend([True, False])
    batch = grpc_v2.decode_infer(request, FEATURES)
    assert batch.column("a").type == pa.int32() and batch.column("a").to_pylist() == [7, -1]
    assert batch.column("b").to_pylist() == ["x", "\u00e9"]
    assert batch.column("c").to_pylist() == [True, False]


def test_raw_contents_one_matrix_into_the_feature_columns() -> None:
    rows = np.arange(6, dtype="<f4").reshape(2, 3)
    request, _ = _request(("x", "FP32", [2, 3]), raw=[rows.tobytes()])
    batch = unpack_features(grpc_v2.decode_infer(request, FEATURES), FEATURES)
    assert batch.schema.names == FEATURES and batch.column("b").to_pylist() == [1.0, 4.0]
    words = b"".join(struct.pack("<I", len(w)) + w for w in (b"hi", b""))
    strings, _ = _request(("s", "BYTES", [2]), raw=[words])
    assert grpc_v2.decode_infer(strings, FEATURES).column("s").to_pylist() == ["hi", ""]


@pytest.mark.parametrize(("inputs", "raw", "phrase"), [
    ([("x", "FP32", [2, 3])], [b"\0" * 8], "input 'x': 8 bytes of raw_input_contents for shape [2, 3] of FP32"),
    ([("x", "FP32", [2])], None, "input 'x': shape [2] needs 2 values, got 0 in contents.fp32_contents"),
    ([("x", "FP16", [1])], None, "input 'x': FP16 data must come in raw_input_contents"),
    ([("x", "FP99", [1])], None, "input 'x': unknown datatype 'FP99'"),
    ([("x", "FP32", [])], None, "input 'x': shape must be a non-empty list"),
    ([("", "FP32", [1])], None, "inputs[0]: missing field 'name'"),
    ([("a", "FP32", [1]), ("b", "FP32", [1])], [b"\0" * 4], "1 raw_input_contents for 2 inputs"),
    ([("a", "FP32", [1]), ("b", "FP32", [2])], [b"\0" * 4, b"\0" * 8], "input 'b' has 2 rows; the other inputs have 1"),
])
def test_bad_requests_name_the_input(inputs, raw, phrase) -> None:  # type: ignore[no-untyped-def]
    request, _ = _request(*inputs, raw=raw)
    with pytest.raises(ProtocolError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        grpc_v2.decode_infer(request, FEATURES)


def test_outputs_as_raw_contents_that_tritonclient_reads() -> None:
    tc = pytest.importorskip("tritonclient.grpc")
    out = pa.record_batch({"label": pa.array([1, 2], pa.int64()), "name": pa.array(["low", "high"]),
                           "p": pa.array([[0.25, 0.75], [0.5, 0.5]], pa.list_(pa.float64()))})
    response = grpc_v2.encode_infer(out, ["label", "name", "p"], model_name="m", request_id="r")
    # through tritonclient's own messages (another descriptor pool, same wire format)
    result = tc.InferResult(tc.service_pb2.ModelInferResponse.FromString(response.SerializeToString()))
    assert result.as_numpy("label").tolist() == [1, 2] and result.as_numpy("label").dtype == np.int64
    assert [v.decode() for v in result.as_numpy("name")] == ["low", "high"]
    np.testing.assert_array_equal(result.as_numpy("p"), [[0.25, 0.75], [0.5, 0.5]])
    assert result.get_response().id == "r" and result.get_output("p").datatype == "FP64"
