"""Records (JSON objects, one per row) to Arrow columns: one conversion, one set of messages, for
the server's records endpoint and the Kafka stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from ..errors import RecordsError

__all__ = ["RecordsError", "field_problem", "object_problem", "records_to_batch"]


def object_problem(record: Any) -> str | None:
    """Why ``record`` is not a record (a JSON object), or None: the one wording of every mode."""
    if isinstance(record, dict):
        return None
    return f"must be a JSON object of field: value, not {type(record).__name__}"


def field_problem(name: str, value: Any, *, category: bool = False, vector: bool = False) -> str | None:
    """Why a record's ``value`` cannot be the feature ``name`` (a number, a string where the
    model takes a ``category``, a list of numbers where it takes a ``vector``), or None; a null
    is a missing value, for the runtime's rule."""
    if value is None:
        return None
    if vector:
        if isinstance(value, list) and not any(
                isinstance(v, bool) or not (v is None or isinstance(v, int | float)) for v in value):
            return None
        return f"field '{name}' is {type(value).__name__}; the model needs a list of numbers"
    if category:
        if isinstance(value, str):
            return None
        return f"field '{name}' is {type(value).__name__}; the model expects a category (a string)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"field '{name}' is {type(value).__name__}; the model needs a number"
    return None


def records_to_batch(records: Sequence[Any], *, where: str = "records",
                     types: Mapping[str, pa.DataType] | None = None,
                     only: Sequence[str] | None = None) -> pa.RecordBatch:
    """``records`` as one batch: a column per field, in order of first appearance.

    ``types`` fixes the type of some fields (the model's features), so a column never depends on
    which records share its batch: such a field missing from every record is a column of nulls.
    ``only`` keeps just those fields. A value that does not fit its field's type (a string among
    numbers, a boolean for a number) is refused, naming the field, rather than coerced.
    """
    types = types or {}
    names: dict[str, None] = {}
    for i, record in enumerate(records):
        problem = object_problem(record)
        if problem is not None:
            raise RecordsError(f"{where}[{i}] {problem}")
        names.update(dict.fromkeys(record))
    if only is not None:
        names = dict.fromkeys([*(n for n in only if n in names or n in types)])
    else:
        names.update(dict.fromkeys(types))
    columns = {}
    for name in names:
        values = [record.get(name) for record in records]
        kind = types.get(name)
        if kind is not None and not pa.types.is_string(kind):
            for i, value in enumerate(values):
                problem = field_problem(name, value, vector=pa.types.is_list(kind))
                if problem is not None:
                    raise RecordsError(f"{where}[{i}]: {problem}")
        try:
            columns[name] = pa.array(values, type=kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise RecordsError(f"field '{name}': values of mixed or unsupported types ({exc})") from None
    return pa.RecordBatch.from_pydict(columns)
