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


def test_json_rows_writes_what_orjson_writes() -> None:
    from lakeinfer.stream.json_rows import json_rows

    nan, inf = float("nan"), float("inf")
    table = pa.table({
        "id": pa.array([1, None, 3, -4, 2**62], pa.int64()),
        "small": pa.array([1, 2, None, 4, 5], pa.int8()),
        "x": pa.array([1.0, nan, None, 1e-5, -0.0]),
        "f32": pa.array([0.9, inf, 3.0, 1e20, -inf], pa.float32()),
        "flag": pa.array([True, False, None, True, False]),
        "text": pa.array(["a", 'a "quote"', None, "é\ttab", "back\\slash"]),
        "plain": pa.array(["a", "b", None, "é", ""]),
        "probability": pa.array([[0.1, 0.9], None, [], [1.0, nan], [None, 2.0]], pa.list_(pa.float64())),
        "ints": pa.array([[1], [2, 3], None, [], [4]], pa.list_(pa.int64())),
        "nested": pa.array([{"k": 1}, None, {"k": 2}, {"k": None}, {"k": 5}]),
    })
    for part in (table, table.slice(1, 3), table.slice(5)):
        expected = [orjson.dumps(row) for row in part.to_pylist()]
        assert json_rows(part.columns, part.column_names).to_pylist() == expected
    # a float32 output reads back as the double Python sees, a whole float stays a float
    assert orjson.loads(json_rows([pa.array([0.9, 2.0], pa.float32())], ["p"])[0].as_py()) == {"p": 0.8999999761581421}
    assert json_rows([pa.array([2.0])], ["p"])[0].as_py() == b'{"p":2.0}'


def test_remembered_id_types_never_change_what_is_read() -> None:
    types: dict[str, pa.DataType] = {}
    first, _ = codec.decode_columns([b'{"id": 7, "a": 1, "b": 2, "x": "y"}'], F, keep=["id"], keep_types=types)  # type: ignore[misc]
    assert types == {"id": pa.int64()} and "x" in first.column_names
    # the next batch skips every other field; one whose ids do not fit an int64 is read again
    again, _ = codec.decode_columns([b'{"id": 8, "a": 1, "b": 2, "x": [1, "z"]}'], F, keep=["id"], keep_types=types)  # type: ignore[misc]
    assert again.column_names == ["a", "b", "id"] and again.column("id").to_pylist() == [8]
    floats, _ = codec.decode_columns([b'{"id": 1.5, "a": 1, "b": 2}'], F, keep=["id"], keep_types=types)  # type: ignore[misc]
    assert floats.column("id").to_pylist() == [1.5]
    names, _ = codec.decode_columns([b'{"id": "k1", "a": 1, "b": 2}'], F, keep=["id"], keep_types=types)  # type: ignore[misc]
    assert names.column("id").to_pylist() == ["k1"]
    # a batch without the kept field has no such column, so its outputs have no such key
    absent, _ = codec.decode_columns([b'{"a": 1, "b": 2}'], F, keep=["id"], keep_types=types)  # type: ignore[misc]
    assert "id" not in absent.column_names
    nulls, _ = codec.decode_columns([b'{"id": null, "a": 1, "b": 2}'], F, keep=["id"], keep_types=types)  # type: ignore[misc]
    assert nulls.column("id").to_pylist() == [None]
