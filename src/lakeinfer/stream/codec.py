"""JSON Kafka messages to one record batch, and predictions back to JSON; each bad message is
set aside with the reason, for the dead-letter topic."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

_MISSING = object()


def decode(values: Sequence[bytes | None], features: Sequence[str] | None
           ) -> tuple[list[dict[str, Any]], list[int], dict[int, str]]:
    """(the parsed good records, their positions, {position: reason} for the bad ones).

    With ``features`` (a pipeline that is the model alone), every feature must be a number.
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
        if not isinstance(record, dict):
            bad[i] = f"a message must be a JSON object, not {type(record).__name__}"
            continue
        reason = _check(record, features) if features else None
        if reason:
            bad[i] = reason
            continue
        records.append(record)
        good.append(i)
    return records, good, bad


def _check(record: dict[str, Any], features: Sequence[str]) -> str | None:
    for name in features:
        value = record.get(name, _MISSING)
        if value is _MISSING:
            return f"missing field '{name}'"
        if value is None:
            return f"field '{name}' is null"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"field '{name}' is {type(value).__name__}; the model needs a number"
    return None


def feature_batch(records: Sequence[dict[str, Any]], features: Sequence[str]) -> pa.RecordBatch:
    """The feature columns of checked records, as float64."""
    n = len(records)
    return pa.RecordBatch.from_pydict(
        {f: pa.array(np.fromiter((r[f] for r in records), dtype=np.float64, count=n)) for f in features})


def record_batch(record: dict[str, Any]) -> pa.RecordBatch:
    """One record as a one-row batch (pipelines with steps before the model read any field)."""
    return pa.RecordBatch.from_pylist([record])


def encode(records: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]], keep: Sequence[str]) -> list[bytes]:
    """One JSON object per record: the ``keep`` fields, then the predictions."""
    encoded = []
    for record, output in zip(records, outputs, strict=True):
        row = {k: record[k] for k in keep if k in record}
        row.update(output)
        encoded.append(json.dumps(row).encode())
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
