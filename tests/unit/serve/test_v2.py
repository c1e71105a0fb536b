"""The Open Inference Protocol v2 codec on its own: requests to Arrow, Arrow to responses."""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pytest

from lakeinfer.schema import PACKED, unpack_features
from lakeinfer.serve import v2

FEATURES = ["a", "b", "c"]


def _body(*inputs: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def test_one_tensor_per_column_and_one_matrix() -> None:
    batch, request = v2.decode_request(_body(
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]},
        {"name": "b", "shape": [2, 1], "datatype": "INT64", "data": [[3], [4]]}, id="r1"), None, FEATURES)
    assert request["id"] == "r1"
    assert batch.schema.names == ["a", "b"]
    assert batch.column("a").type == pa.float32() and batch.column("b").to_pylist() == [3, 4]
    matrix, _ = v2.decode_request(_body({"name": "x", "shape": [2, 3], "datatype": "FP64",
                                         "data": [1, 2, 3, 4, 5, 6]}), None, FEATURES)
    # the one [N, K] tensor of the features stays one matrix column, split only where needed
    assert matrix.schema.names == [PACKED] and matrix.column(0).to_pylist() == [[1, 2, 3], [4, 5, 6]]
    matrix = unpack_features(matrix, FEATURES)
    assert matrix.schema.names == FEATURES
    assert [matrix.column(f).to_pylist() for f in FEATURES] == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    # a matrix whose width is not the feature count is a column of vectors
    vectors, _ = v2.decode_request(_body({"name": "v", "shape": [1, 2], "datatype": "FP64", "data": [7, 8]}),
                                   None, FEATURES)
    assert vectors.column("v").to_pylist() == [[7.0, 8.0]]


def test_binary_tensors_and_bytes() -> None:
    values = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    words = b"".join(struct.pack("<I", len(w)) + w for w in (b"hi", b"there"))
    head = json.dumps({"inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": values.nbytes}},
        {"name": "tag", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(words)}}]}).encode()
    batch, _ = v2.decode_request(head + values.tobytes() + words, len(head), FEATURES)
    assert batch.column("c").to_pylist() == [3.0, 6.0]
    assert batch.column("tag").to_pylist() == ["hi", "there"]


@pytest.mark.parametrize(("body", "phrase"), [
    (b"[1]", "must be a JSON object"),
    (b'{"inputs": []}', "'inputs' is empty"),
    (b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1]}]}', "shape [2] needs 2 values, got 1"),
    (b'{"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}]}', "non-negative integers"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": ["x"]}]}', "input 'a': data do not match"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},'
     b' {"name": "b", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}', "input 'b' has 2 rows"),
    (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', "inputs[0]: missing field 'name'"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}',
     "does not fit the body"),
])
def test_bad_requests_name_the_field(body: bytes, phrase: str) -> None:
    with pytest.raises(v2.ProtocolError) as caught:
        v2.decode_request(body, None, FEATURES)
    assert phrase in str(caught.value)


def test_responses_json_and_binary() -> None:
    out = pa.RecordBatch.from_pydict({"prediction": pa.array([1, 0], pa.int64()),
                                      "probability": pa.array([[0.25, 0.75], [0.5, 0.5]]),
                                      "label": pa.array(["yes", "no"])})
    chosen = v2.requested_outputs({"outputs": [{"name": "probability", "parameters": {"binary_data": True}},
                                               {"name": "label"}]}, out.schema.names)
    response, blobs = v2.encode_response(out, chosen, model_name="m", request_id="7")
    assert response["id"] == "7" and response["model_name"] == "m"
    prob, label = response["outputs"]
    assert prob == {"name": "probability", "datatype": "FP64", "shape": [2, 2],
                    "parameters": {"binary_data_size": 32}}
    np.testing.assert_array_equal(np.frombuffer(blobs[0], np.float64), [0.25, 0.75, 0.5, 0.5])
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["yes", "no"]}
    everything = v2.requested_outputs({}, out.schema.names)
    assert everything == [("prediction", False), ("probability", False), ("label", False)]
    with pytest.raises(v2.ProtocolError, match="output 'margin' is not one of the model's outputs"):
        v2.requested_outputs({"outputs": [{"name": "margin"}]}, out.schema.names)


def test_metadata_from_arrow_schemas() -> None:
    inputs = pa.schema([("a", pa.float32()), ("b", pa.float64())])
    outputs = pa.schema([("prediction", pa.int64()), ("probability", pa.list_(pa.float64())),
                         ("label", pa.string())])
    meta = v2.model_metadata("m", "onnx", inputs, outputs)
    assert meta["platform"] == "lakeinfer_onnx"
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1]},
                              {"name": "b", "datatype": "FP64", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "prediction", "datatype": "INT64", "shape": [-1]},
                               {"name": "probability", "datatype": "FP64", "shape": [-1, -1]},
                               {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    assert v2.server_metadata()["extensions"] == ["binary_tensor_data"]


def test_a_model_that_names_no_features_takes_its_one_tensor() -> None:
    columns = ["X[0]", "X[1]", "X[2]"]
    batch, _ = v2.decode_request(_body({"name": "X", "shape": [2, 3], "datatype": "FP32",
                                        "data": [1, 2, 3, 4, 5, 6]}), None, columns, ("X", 3))
    assert batch.schema.names == [PACKED]
    batch = unpack_features(batch, columns)
    assert batch.schema.names == columns
    assert batch.column("X[0]").to_pylist() == [1, 4] and batch.column("X[2]").to_pylist() == [3, 6]
    assert batch.column("X[1]").type == pa.float32()
    cases = [
        ({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
         "input 'x' is not the model's: the model takes one input, 'X' of shape [-1, 3]"),
        ({"name": "X", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
         "input 'X': shape [3, 2] does not fit the model's [-1, 3]"),
        ({"name": "X", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
         "input 'X': shape [3] does not fit the model's [-1, 3]"),
        ({"name": "X[0]", "shape": [1], "datatype": "FP32", "data": [1]}, "input 'X[0]' is not the model's"),
    ]
    for spec, message in cases:
        with pytest.raises(v2.ProtocolError, match=message.replace("[", r"\[").replace("(", r"\(")):
            v2.decode_request(_body(spec), None, columns, ("X", 3))
    twice = {"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    with pytest.raises(v2.ProtocolError, match="input 'X' is given twice"):
        v2.decode_request(_body(twice, twice), None, columns, ("X", 3))


def test_metadata_of_a_model_that_names_no_features() -> None:
    inputs = pa.schema([(f"X[{j}]", pa.float32()) for j in range(5)])
    meta = v2.model_metadata("m", "onnx", inputs, pa.schema([("prediction", pa.int64())]), ("X", 5))
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 5]}]


def test_json_the_fast_parser_refuses_is_read_as_the_standard_library_reads_it() -> None:
    from lakeinfer.serve.rest_infer import _dumps
    from lakeinfer.serve.v2 import loads

    # NaN tokens and integers past 64 bits: valid for Python's json, refused by orjson
    assert loads(b'{"id": 18446744073709551616, "x": [NaN]}')["id"] == 2**64
    assert json.loads(_dumps({"id": 2**64})) == {"id": 2**64}
    with pytest.raises(v2.ProtocolError, match="not valid JSON"):
        loads(b"{nope")
