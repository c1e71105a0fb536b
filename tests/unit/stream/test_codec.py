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
    assert bad == {0: "field 'a' is str; the model needs a number", 2: "a message must be a JSON object of field: value, not list"}


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
    # numbers of every size, whole and not: each reads back as the same double, a float
    import numpy as np

    rng = np.random.default_rng(3)
    numbers = (10.0 ** rng.uniform(-8, 20, 20_000) * rng.choice([-1, 1], 20_000)).tolist()
    numbers += [float(int(v)) for v in numbers[:5_000]] + [0.0, -0.0, 2.0**53, 1e15, 1e16, 5e-324, float(2**63)]
    read = [orjson.loads(t)["p"] for t in json_rows([pa.array(numbers)], ["p"]).to_pylist()]
    assert all(type(r) is float for r in read)
    assert np.array_equal(np.array(read).view(np.int64), np.array(numbers).view(np.int64))


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


def _bits(table: pa.Table) -> list[list[object]]:
    """Every value, a double as its bits (so -0.0 and 0.0 differ)."""
    import numpy as np

    return [np.asarray(c.to_numpy(zero_copy_only=False)).view(np.int64).tolist() if pa.types.is_floating(c.type)
            else c.to_pylist() for c in table.columns]


def test_exact_messages_read_by_polars_as_arrow_reads_them() -> None:
    import numpy as np
    import pyarrow.json as pjson

    rng = np.random.default_rng(7)
    numbers = np.concatenate([rng.normal(size=300), rng.normal(size=300) * 1e300, rng.normal(size=300) * 1e-305,
                              rng.uniform(-1, 1, size=300)])
    forms = [repr, lambda v: f"{v:.17g}", lambda v: f"{v:.5f}" if abs(v) < 1e6 else f"{v:.3e}",
             lambda v: f"{v:.25E}", lambda v: str(int(v * 1e6)) if abs(v) < 1e12 else repr(v), lambda v: f"{v:.0e}"]
    texts = [form(float(v)) for v in numbers for form in forms]
    texts += ["-0.0", "0", "-0e0", "1E5", "9007199254740993", "123456789012345678901", "-1e-400", "4.9e-324"]
    values = [f'{{"id": {i}, "a": {t}, "b": {texts[-i - 1]}}}'.encode() for i, t in enumerate(texts)]
    schema = pa.schema([("a", pa.float64()), ("b", pa.float64()), ("id", pa.int64())])
    data = b"\n".join(values)
    fast = codec._read_exact(data, schema, len(values))
    assert fast is not None  # every message holds exactly these fields: polars reads them
    arrow = pjson.read_json(pa.BufferReader(data), parse_options=pjson.ParseOptions(explicit_schema=schema))
    assert fast.schema == arrow.schema
    assert _bits(fast) == _bits(arrow)
    assert fast.column("a").to_pylist() == [float(t) for t in texts]


def test_what_polars_would_read_otherwise_is_left_to_arrow() -> None:
    schema = pa.schema([("a", pa.float64()), ("b", pa.float64())])

    def exact(*values: bytes) -> pa.Table | None:
        return codec._read_exact(b"\n".join(values), schema, len(values))

    ok = b'{"a": 1, "b": 2}'
    assert exact(ok, ok) is not None
    assert exact(ok, b'{"a": 1, "a": 5, "b": 2}') is None  # a key twice: polars keeps the first, Arrow refuses
    assert exact(ok, b'{"a": 1, "a": 5}') is None  # ... even where the count of keys adds up
    assert exact(ok, b'{"a": 1, "b": 2, "c": 3}') is None  # a field outside the schema
    assert exact(ok, b'{"a": 1, "b": -0}') is None  # an integer -0: Arrow reads -0.0, polars 0.0
    assert exact(ok, b'{"a": 1, "b": null}') is None
    assert exact(ok, b'{"a": true, "b": 2}') is None
    assert exact(ok, b'{"a": "1", "b": 2}') is None
    assert exact(ok, b'{"a": 1, "b": 2}{"a": 1, "b": 2}') is None
    assert exact(ok, b"") is None
    assert exact(ok, b'{"a": 1' + b"0" * 400 + b', "b": 2}') is None  # polars refuses an integer this long
    # a string field: polars would read 5 as "5", where Arrow refuses it (the message is judged alone)
    text = pa.schema([("a", pa.float64()), ("s", pa.string())])
    assert codec._read_exact(b'{"a": 1, "s": "x"}', text, 1) is None
    assert codec.decode_columns([b'{"a": 1, "s": 5}', b'{"a": 2, "s": "b"}'], text, keep_types={}) is None
    # and through the stream's parse: what Arrow makes of each, as before
    types = {"id": pa.int64()}
    table, _ = codec.decode_columns([b'{"id": 1, "a": 1, "b": 2, "c": 3}', b'{"id": 2, "a": -0, "b": 1}'], F,
                                    keep=["id"], keep_types=types)  # type: ignore[misc]
    assert _bits(table.select(["a"])) == _bits(pa.table({"a": [1.0, -0.0]}))
    assert codec.decode_columns([b'{"id": 1, "a": 1, "a": 5, "b": 2}'], F, keep=["id"], keep_types=types) is None


def test_a_message_of_two_objects_never_lends_one_to_its_neighbour() -> None:
    # Arrow's reader takes a line of two objects for two rows and an empty line for none
    two = b'{"a": 1, "b": 2} {"a": 3, "b": 4}'
    for neighbour in (b"", b" ", b"\t"):
        assert codec.decode_columns([two, neighbour], F) is None
        assert codec.decode_columns([neighbour, two], F) is None
    assert codec.decode_columns([two], F) is None
    records, good, bad = codec.decode([two, b""], F)
    assert good == [] and set(bad) == {0, 1}
