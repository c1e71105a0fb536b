"""The stream codec: Arrow's batch parse, its fallbacks, and the reasons given to bad messages."""

import json

import orjson
import pyarrow as pa

from lakeinfer.stream import codec

F = ["a", "b"]


def test_batch_parse_leaves_missing_and_null_features_to_the_runtime() -> None:
    values = [b'{"id": 1, "a": 1, "b": 2.5}', b'{"id": 2, "a": 3}', b'{"id": 3, "a": null, "b": 1}',
              b'{"id": 4, "a": 0.5, "b": -1}']
    table, bad = codec.decode_columns(values, F)  # type: ignore[misc]
    assert table.num_rows == 4
    assert bad == {}  # null and missing are missing values: the model's rule judges them
    assert table.column("a").type == pa.float64()
    assert table.column("a").to_pylist() == [1.0, 3.0, None, 0.5]
    assert table.column("b").to_pylist() == [2.5, None, 1.0, -1.0]
    good = table.take(pa.array([0, 3]))
    outputs = pa.RecordBatch.from_pydict({"prediction": [7, 8], "probability": [[0.1, 0.9], [1.0, 0.0]]})
    rows = [orjson.loads(v) for v in codec.encode_table(good, outputs, ["id", "absent"])]
    assert rows == [{"id": 1, "prediction": 7, "probability": [0.1, 0.9]},
                    {"id": 4, "prediction": 8, "probability": [1.0, 0.0]}]


def test_batch_parse_falls_back_on_what_it_cannot_take() -> None:
    assert codec.decode_columns([b'{"a": "x", "b": 1}'], F) is None  # a string feature
    assert codec.decode_columns([b'{"a": 1,\n "b": 1}'], F) is None  # a message over two lines
    assert codec.decode_columns([b"{nope"], F) is None
    assert codec.decode_columns([b"[1, 2]"], F) is None
    records, good, bad = codec.decode([b'{"a": "x", "b": 1}', b'{"a": 1, "b": 2}', b"[1]"], F)
    assert good == [1] and records == [{"a": 1, "b": 2}]
    assert bad == {0: "field 'a' is str; the model needs a number", 2: "a message must be a JSON object, not list"}


def test_dead_letter_keeps_the_original_bytes() -> None:
    letter = json.loads(codec.dead_letter(b"\xff", "bad", "t", 1, 42))
    assert letter == {"error": "bad", "topic": "t", "partition": 1, "offset": 42, "value": "ff", "value_encoding": "hex"}


def test_a_kept_id_that_a_double_would_round_takes_the_exact_path() -> None:
    values = [b'{"id": 12345678901234567, "a": 1, "b": 2}', b'{"id": 1.5, "a": 1, "b": 2}']
    assert codec.decode_columns(values, F, keep=["id"]) is None
    small = [b'{"id": 7, "a": 1, "b": 2}', b'{"id": 1.5, "a": 1, "b": 2}']
    table, _ = codec.decode_columns(small, F, keep=["id"])  # type: ignore[misc]
    assert table.column("id").to_pylist() == [7.0, 1.5]
