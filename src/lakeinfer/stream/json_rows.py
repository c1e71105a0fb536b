"""Arrow columns to one JSON object per row, written by Arrow's compute kernels: a few calls per
column for a whole micro-batch instead of a Python object per value and an ``orjson.dumps`` per
row, which was most of the stream's cost per message.

The text is what ``orjson.dumps`` writes for the row's ``to_pylist()`` values, number for number:
integers as integers, floats as the shortest text that reads back to the same double (a float32
output as the double Python reads it, a whole number with its ``.0``), NaN and ±Infinity as null,
lists of numbers as arrays. The form may differ where the value does not: Arrow writes ``1e+15``
and ``0.0000010002`` where orjson writes ``1000000000000000.0`` and ``1.0002e-6``. Other types
(strings that need escaping, dates, structs, ...) are written by orjson value by value, so they
read back the same as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["json_rows"]

_NULL = pa.scalar(b"null", pa.binary())
_EMPTY = pa.scalar(b"", pa.binary())
# what orjson escapes in a string: the quote, the backslash and the control characters
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def json_rows(columns: Sequence[pa.Array | pa.ChunkedArray], names: Sequence[str]) -> pa.Array:
    """One JSON object per row (binary), with the ``names`` as keys, in order."""
    if not columns:
        raise ValueError("json_rows needs at least one column")
    parts: list[pa.Array | pa.Scalar] = []
    for i, (name, column) in enumerate(zip(names, columns, strict=True)):
        parts.append(pa.scalar(b"{" if i == 0 else b",", pa.binary()))
        parts.append(pa.scalar(orjson.dumps(name) + b":", pa.binary()))
        parts.append(_values(_array(column)))
    parts.append(pa.scalar(b"}", pa.binary()))
    return pc.binary_join_element_wise(*parts, _EMPTY)


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _values(column: pa.Array) -> pa.Array:
    """Each value's JSON text (binary), ``null`` for a null."""
    kind = column.type
    if pa.types.is_integer(kind):
        text = pc.cast(pc.cast(column, pa.string()), pa.binary())
    elif pa.types.is_floating(kind):
        text = _floats(column)
    elif pa.types.is_boolean(kind):
        text = pc.if_else(column, pa.scalar(b"true", pa.binary()), pa.scalar(b"false", pa.binary()))
    elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and _is_number(kind.value_type):
        text = _lists(column)
    elif pa.types.is_string(kind) and not pc.any(pc.match_substring_regex(column, _NEEDS_ESCAPE)).as_py():
        quote = pa.scalar(b'"', pa.binary())
        text = pc.binary_join_element_wise(quote, pc.cast(column, pa.binary()), quote, _EMPTY)
    else:
        text = pa.array([None if v is None else orjson.dumps(v) for v in column.to_pylist()], pa.binary())
    return pc.fill_null(text, _NULL)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _floats(column: pa.Array) -> pa.Array:
    # float32 as the double that Python (and so orjson) sees: 0.8999999761581421, not 0.9
    doubles = pc.cast(column, pa.float64())
    text = pc.cast(pc.cast(doubles, pa.string()), pa.binary())
    # Arrow writes a whole number as '1' (or '1e+16'); orjson as '1.0', which a typed reader keeps
    # a float. Found by value, with a plain search for the exponent: a regex over every text cost
    # more than the rest of the encoding
    whole = pc.and_(pc.is_finite(doubles), pc.equal(doubles, pc.trunc(doubles)))
    whole = pc.and_(whole, pc.invert(pc.match_substring(text, "e")))
    text = pc.if_else(whole, pc.binary_join_element_wise(text, pa.scalar(b".0", pa.binary()), _EMPTY), text)
    return pc.if_else(pc.is_finite(doubles), text, _NULL)


def _lists(column: pa.Array) -> pa.Array:
    lengths = pc.fill_null(pc.list_value_length(column), 0)
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cast(pc.cumulative_sum(lengths), pa.int32())])
    items = pa.ListArray.from_arrays(offsets, _values(pc.list_flatten(column)))
    joined = pc.binary_join(items, pa.scalar(b",", pa.binary()))
    text = pc.binary_join_element_wise(pa.scalar(b"[", pa.binary()), joined, pa.scalar(b"]", pa.binary()), _EMPTY)
    return pc.if_else(pc.is_valid(column), text, _NULL)
