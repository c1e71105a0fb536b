"""Records (JSON objects, one per row) to Arrow columns: one conversion, one set of messages, for
the server's records endpoint and the Kafka stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ..errors import InputError

__all__ = ["RecordsError", "records_to_batch"]


class RecordsError(InputError):
    """Records that cannot become columns; the message names the record and the field."""


def records_to_batch(records: Sequence[Any], *, where: str = "records") -> pa.RecordBatch:
    """``records`` as one batch: a column per field, in order of first appearance.

    A field missing from some records is null there. A field whose values do not share one type
    (a string among numbers) is refused, naming it, rather than coerced.
    """
    names: dict[str, None] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise RecordsError(f"{where}[{i}] must be an object of field: value, not {type(record).__name__}")
        names.update(dict.fromkeys(record))
    columns = {}
    for name in names:
        values = [record.get(name) for record in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise RecordsError(f"field '{name}': values of mixed or unsupported types ({exc})") from None
    return pa.RecordBatch.from_pydict(columns)
