"""JSON Kafka messages to one record batch, and predictions back to JSON; each bad message is
set aside with the reason, for the dead-letter topic."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pjson

from ..runtime.records import field_problem, object_problem
from .json_rows import json_rows


def decode(values: Sequence[bytes | None], features: Sequence[str] | None, text: frozenset[str] = frozenset(),
           vectors: frozenset[str] = frozenset()) -> tuple[list[dict[str, Any]], list[int], dict[int, str]]:
    """(the parsed good records, their positions, {position: reason} for the bad ones).

    With ``features`` (a pipeline that is the model alone), every feature must be a number (a
    string for those in ``text``, a list of numbers for those in ``vectors``).
    """
    records: list[dict[str, Any]] = []
    good: list[int] = []
    bad: dict[int, str] = {}
    for i, value in enumerate(values):
        if value is None:
            bad[i] = "the message has no value"
            continue
        try:
            record = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            bad[i] = f"not valid JSON: {exc}"
            continue
        problem = object_problem(record)
        if problem is not None:
            bad[i] = f"a message {problem}"
            continue
        reason = _check(record, features, text, vectors) if features else None
        if reason:
            bad[i] = reason
            continue
        records.append(record)
        good.append(i)
    return records, good, bad


def _check(record: dict[str, Any], features: Sequence[str], text: frozenset[str] = frozenset(),
           vectors: frozenset[str] = frozenset()) -> str | None:
    # a missing or null feature is a missing value, judged by the runtime's one rule
    for name in features:
        problem = field_problem(name, record.get(name), category=name in text, vector=name in vectors)
        if problem is not None:
            return problem
    return None


def decode_columns(values: Sequence[bytes | None], features: Sequence[str] | pa.Schema,
                   keep: Sequence[str] = (), keep_types: dict[str, pa.DataType] | None = None
                   ) -> tuple[pa.Table, dict[int, str]] | None:
    """All messages parsed at once (polars or Arrow's JSON reader): (the table, {position: reason}
    of bad rows). None when the fast path does not apply (a message that is not one line starting a
    JSON object, or a value of the wrong type): the caller decodes one by one. A missing or null
    feature is null here, for the runtime's missing-value rule.

    The table holds the features and the ``keep`` fields found. ``keep_types`` (what earlier
    batches found, filled in here) lets the reader skip every other field instead of inferring
    it, a quarter of its work; a batch that does not fit them is read again, inferring.
    """
    try:
        data = b"\n".join(values)  # type: ignore[arg-type]
    except TypeError:  # a message without a value
        return None
    if not values or not _one_object_a_line(data, len(values)):
        return None
    schema = features if isinstance(features, pa.Schema) else pa.schema([(f, pa.float64()) for f in features])
    # numbers as float64 whatever the model's own width: the runtime casts them once
    schema = pa.schema([(f.name, pa.float64() if _is_number(f.type) else f.type) for f in schema])
    kept = [k for k in dict.fromkeys(keep) if k not in schema.names]
    table = None
    if keep_types is not None and all(k in keep_types for k in kept):
        table = _read_json(data, pa.schema([*schema, *((k, keep_types[k]) for k in kept)]), "ignore", len(values))
        # a kept field absent from every message is no column at all: only inferring tells
        if table is not None and any(table.column(k).null_count == table.num_rows for k in kept):
            table = None
    if table is None:
        table = _read_json(data, schema, "infer", len(values))
        if table is None:
            return None
        if keep_types is not None:
            # only types that reject what does not fit them: an int64 field fails on 1.5, where
            # a double field would take 7 and give back 7.0
            keep_types.update((k, table.column(k).type) for k in kept if k in table.column_names
                              and table.column(k).type in (pa.int64(), pa.string()))
    if table.num_rows != len(values):
        return None
    for name in keep:
        # ints and floats in one kept field become doubles: a large id would come back rounded
        if name in table.column_names and pa.types.is_floating(table.column(name).type):
            magnitude = pc.max(pc.abs(table.column(name))).as_py()
            if magnitude is not None and magnitude > 2**53:
                return None
    return table, {}


_COLON, _MINUS, _ZERO, _NEWLINE, _BRACE = ord(":"), ord("-"), ord("0"), ord("\n"), ord("{")


def _one_object_a_line(data: bytes, messages: int) -> bool:
    """Whether each message is one line that starts an object. Arrow's reader takes a line with two
    objects for two rows, and an empty line for none: a message of two objects beside an empty
    message would give the empty one the second object's outputs."""
    text = np.frombuffer(data, np.uint8)
    starts = np.flatnonzero(text == _NEWLINE) + 1  # the messages after the first
    if len(starts) != messages - 1 or not len(text) or text[0] != _BRACE:
        return False
    return bool(len(starts) == 0 or (starts[-1] < len(text) and (text[starts] == _BRACE).all()))


def _read_json(data: bytes, schema: pa.Schema, unexpected: str, rows: int) -> pa.Table | None:
    if unexpected == "ignore":
        table = _read_exact(data, schema, rows)
        if table is not None:
            return table
    options = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior=unexpected)
    try:
        return pjson.read_json(pa.BufferReader(data), parse_options=options,
                               read_options=pjson.ReadOptions(use_threads=False, block_size=len(data) + 1))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


# numbers only: polars reads any JSON value into a string field (5 as "5"), where Arrow refuses it
_POLARS_TYPES = {pa.float64(): "Float64", pa.int64(): "Int64"}
_NUMBER_GOES_ON = np.frombuffer(b"0123456789.eE", np.uint8)


def _read_exact(data: bytes, schema: pa.Schema, rows: int) -> pa.Table | None:
    """Messages that hold exactly the fields of ``schema``, all numbers, read by polars (twice as
    fast as Arrow, the same values), or None where polars could read them otherwise than Arrow.

    A key given twice: Arrow rejects the batch (each message is then judged on its own), polars
    would keep the first value. So polars reads only batches whose colons (one per key, more
    inside strings) number exactly the fields times the messages, with every field found (not
    null) in every message: then no message has a key twice, nor one outside ``schema``. And a
    JSON integer -0: Arrow reads -0.0 into a double field, polars 0.0, so a batch with one is left
    to Arrow; the text is searched for one only where polars read a zero (a search over every
    byte, it cost as much as the rest of these checks).
    """
    if not all(field.type in _POLARS_TYPES for field in schema):
        return None
    text = np.frombuffer(data, np.uint8)
    if np.count_nonzero(text == _COLON) != rows * len(schema):
        return None
    import polars as pl

    try:
        frame = pl.read_ndjson(data, schema={f.name: getattr(pl, _POLARS_TYPES[f.type]) for f in schema})
    except Exception:  # polars refuses what Arrow refuses (bad JSON, a string for a number) and says so its own way
        return None
    if frame.height != rows or any(frame.null_count().row(0)):
        return None
    doubles = [f.name for f in schema if f.type == pa.float64()]
    if doubles and frame.select(pl.any_horizontal(pl.col(doubles) == 0).any()).item():
        minus_zero = np.flatnonzero((text[:-2] == _MINUS) & (text[1:-1] == _ZERO))
        if not np.isin(text[minus_zero + 2], _NUMBER_GOES_ON).all():
            return None
    table: pa.Table = frame.to_arrow().cast(schema)
    return table


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def encode_table(rows: pa.Table, outputs: pa.RecordBatch, keep: Sequence[str]) -> list[bytes]:
    """One JSON object per row: the ``keep`` fields present, then the outputs."""
    kept = [k for k in keep if k in rows.column_names]
    encoded: list[bytes] = json_rows([*(rows.column(k) for k in kept), *outputs.columns],
                                     [*kept, *outputs.schema.names]).to_pylist()
    return encoded


def encode(records: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]], keep: Sequence[str]) -> list[bytes]:
    """One JSON object per record: the ``keep`` fields, then the predictions."""
    encoded = []
    for record, output in zip(records, outputs, strict=True):
        row = {k: record[k] for k in keep if k in record}
        row.update(output)
        encoded.append(orjson.dumps(row))
    return encoded


def dead_letter(value: bytes | None, reason: str, topic: str, partition: int, offset: int) -> bytes:
    """The dead-letter record: the error, where the message came from, and its original bytes."""
    text: str | None
    try:
        text = value.decode("utf-8") if value is not None else None
        encoding = "utf-8"
    except UnicodeDecodeError:
        text, encoding = value.hex() if value is not None else None, "hex"
    return json.dumps({"error": reason, "topic": topic, "partition": partition, "offset": offset,
                       "value": text, "value_encoding": encoding}).encode()
