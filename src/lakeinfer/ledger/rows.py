"""The ledger's rows: who asked (request id and row, or Kafka topic, partition and offset), which
model, when, how long it took, the features as the model received them, and its outputs."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ..schema import PACKED, packed_width, unpack_features
from .table import ledger_ref

__all__ = ["IDENTITY", "LEDGER_WAL", "features_as_received", "features_note", "ledger_rows", "table_rows",
           "wal_folder"]

LEDGER_WAL = ".lakeinfer-ledger"
# the columns that say which prediction a row is, besides the features and outputs
IDENTITY = ("request_id", "row", "topic", "partition", "offset", "model", "model_sha256", "received_at",
            "latency_ms")



def wal_folder(ledger: str, given: str | None) -> str:
    """Where the WAL of ``ledger`` waits: ``given``, else ``.lakeinfer-ledger/<table>`` here."""
    if given:
        return os.path.abspath(given)
    ref = ledger_ref(ledger)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref.name.strip("/"))
    return os.path.abspath(os.path.join(LEDGER_WAL, f"{ref.kind}-{safe}"))


def features_as_received(inputs: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``inputs`` as feature columns of the model's types (a one-tensor request split into them)."""
    if packed_width(inputs) is not None:
        inputs = unpack_features(inputs, schema.names)
    columns, names = [], []
    for f in inputs.schema:
        column = inputs.column(f.name)
        index = schema.get_field_index(f.name)
        if index >= 0 and column.type != schema.field(index).type:
            try:
                column = column.cast(schema.field(index).type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # kept as sent: the model refused it or read it its own way
        columns.append(column)
        names.append(f.name)
    return pa.RecordBatch.from_arrays(columns, names=names)


def ledger_rows(identity: dict[str, pa.Array], features: pa.RecordBatch, outputs: pa.RecordBatch,
                keep: Sequence[str] = ()) -> pa.RecordBatch:
    """One ledger row per predicted row: ``identity`` columns, the features (and ``keep``), the outputs."""
    arrays = list(identity.values())
    names = list(identity)
    for name in features.schema.names:
        if name not in names:
            arrays.append(features.column(name))
            names.append(name)
    for name in keep:
        if name not in names and name in features.schema.names:
            arrays.append(features.column(name))
            names.append(name)
    for name in outputs.schema.names:
        arrays.append(outputs.column(name))
        names.append(name if name not in names else f"output_{name}")
    return pa.RecordBatch.from_arrays(arrays, names=names)


FEATURES_KEY = b"lakeinfer.features"


def features_note(schema: pa.Schema) -> dict[bytes, bytes]:
    """The schema metadata that notes the model's feature ``schema`` on a frame whose inputs are
    still as sent, for :func:`table_rows` (made once per model, put on each of its frames)."""
    return {FEATURES_KEY: schema.serialize().to_pybytes()}


def table_rows(rows: pa.RecordBatch) -> pa.RecordBatch:
    """A WAL frame's rows as the table holds them: inputs noted by :func:`features_note` split into
    feature columns of the model's types (the committer's work, off the request path)."""
    raw = (rows.schema.metadata or {}).get(FEATURES_KEY)
    if raw is None:
        return rows
    schema = pa.ipc.read_schema(pa.py_buffer(raw))
    names = rows.schema.names
    if PACKED in names:
        at = names.index(PACKED)
        features = features_as_received(pa.RecordBatch.from_arrays([rows.column(at)], names=[PACKED]), schema)
        arrays = [*rows.columns[:at], *features.columns, *rows.columns[at + 1:]]
        names = [*names[:at], *features.schema.names, *names[at + 1:]]
        rows = pa.RecordBatch.from_arrays(arrays, names=names)
    typed = features_as_received(rows.select([n for n in names if n in schema.names]), schema)
    return pa.RecordBatch.from_arrays([typed.column(n) if n in schema.names else rows.column(n) for n in names],
                                      names=names)


def repeated(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value])).cast(pa.string())
