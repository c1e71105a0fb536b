"""``lakeinfer replay``: the ledger's inputs scored again, by the model that produced them (a
parity check: every row identical, or the environment has drifted) or by a candidate (a shadow
test on real traffic), and the new outputs compared with the logged ones.

Scoring uses the runtime every mode uses, on one thread per model call, in batches: a flavor
whose bits do not depend on how rows are batched (tree ensembles and linear models on
onnxruntime, scikit-learn, XGBoost, LightGBM) gives ``identical == rows`` with the producing
model; a row that differs only in the last bits of a float is counted in ``within_1e-9``.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError
from ..io.tables import parse_table
from ..runtime import ModelRuntime, PipelineRecipe
from .rows import IDENTITY
from .table import LedgerTable

__all__ = ["ReplaySummary", "replay"]

BATCH_ROWS = 4096
SHOWN = 5
TOLERANCE = 1e-9


@dataclass
class ReplaySummary:
    """What replay found: ``rows`` selected, ``identical`` bit for bit, ``changed_labels``,
    ``within_1e-9`` (not identical, no label changed, no number moved more than 1e-9)."""

    rows: int = 0
    identical: int = 0
    changed_labels: int = 0
    within_tolerance: int = 0
    max_probability_change: float = 0.0
    compared: list[str] = field(default_factory=list)
    first_differences: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "identical": self.identical, "changed_labels": self.changed_labels,
                "within_1e-9": self.within_tolerance, "max_probability_change": self.max_probability_change,
                "compared": self.compared, "first_differences": self.first_differences}

    def line(self) -> str:
        text = (f"replayed {self.rows:,} rows: {self.identical:,} identical, {self.changed_labels:,} changed labels, "
                f"largest probability change {self.max_probability_change:.3g}")
        if self.within_tolerance:
            text += f", {self.within_tolerance:,} within {TOLERANCE:g}"
        return text


def _bits(value: Any) -> Any:
    """A value as its exact bits (floats by their IEEE bytes, so that -0.0 != 0.0 and NaN == NaN)."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, list):
        return tuple(_bits(v) for v in value)
    return value


def _numbers(value: Any) -> list[float]:
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


def _largest_change(old: Any, new: Any) -> float | None:
    """The largest absolute difference between two values' numbers; None when they differ otherwise."""
    a, b = _numbers(old), _numbers(new)
    if len(a) != len(b) or (not a and old != new):
        return None
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if math.isnan(x) and math.isnan(y):
            continue
        worst = max(worst, abs(x - y))
    return worst


def _label_column(names: Sequence[str], logged: pa.Table) -> str | None:
    for name in ("prediction", "label"):
        if name in names:
            return name
    return next((n for n in names if not pa.types.is_list(logged.schema.field(n).type)), None)


def replay(ledger: str, recipe: PipelineRecipe, *, catalog: str | None = None, where: str | None = None,
           snapshot: str | None = None, output: str | None = None) -> ReplaySummary:
    """Score the ledger's selected rows with ``recipe`` and compare; ``output``: every row's logged
    and new outputs side by side (a folder of Parquet, or a table)."""
    logged = LedgerTable(ledger, catalog).read(where=where, snapshot=snapshot)
    runtime = ModelRuntime(recipe, tensor_input=True, threads=1)
    features = list(runtime.input_columns)
    missing = [f for f in features if f not in logged.column_names]
    if missing:
        raise ConfigError(f"the ledger {ledger} has no column {', '.join(map(repr, missing))} this model reads "
                          f"(it has {', '.join(logged.column_names)})")
    new_parts = []
    for start in range(0, logged.num_rows, BATCH_ROWS):
        chunk = logged.slice(start, BATCH_ROWS).select(features).combine_chunks().to_batches()
        if chunk:
            new_parts.append(runtime.transform(chunk[0]).select(list(runtime.describe_outputs().names)))
    new = pa.Table.from_batches(new_parts) if new_parts else runtime.describe_outputs().empty_table()
    return _compare(logged, new, output, catalog)


def _compare(logged: pa.Table, new: pa.Table, output: str | None, catalog: str | None) -> ReplaySummary:
    common = [n for n in new.column_names if n in logged.column_names and n not in IDENTITY]
    if not common:
        raise ConfigError(f"the model's outputs ({', '.join(new.column_names)}) are none of the ledger's columns")
    summary = ReplaySummary(rows=logged.num_rows, compared=common)
    label = _label_column(common, logged)
    probability = "probability" if "probability" in common else None
    ids = [n for n in IDENTITY[:5] if n in logged.column_names]
    columns = {n: (logged.column(n).to_pylist(), new.column(n).to_pylist()) for n in common}
    keys = logged.select(ids).to_pylist()
    for i in range(logged.num_rows):
        same, close = True, True
        differing: dict[str, Any] = {}
        for name, (old, fresh) in columns.items():
            if _bits(old[i]) == _bits(fresh[i]):
                continue
            same = False
            differing[name] = {"logged": old[i], "new": fresh[i]}
            change = _largest_change(old[i], fresh[i])
            if change is None or change > TOLERANCE or name == label:
                close = False
            if name == probability and change is not None:
                summary.max_probability_change = max(summary.max_probability_change, change)
        if label is not None and _bits(columns[label][0][i]) != _bits(columns[label][1][i]):
            summary.changed_labels += 1
        if same:
            summary.identical += 1
            continue
        if close:
            summary.within_tolerance += 1
        if len(summary.first_differences) < SHOWN:
            summary.first_differences.append({**keys[i], **differing})
    if output is not None:
        _write_side_by_side(logged, new, ids, common, output, catalog)
    return summary


def _write_side_by_side(logged: pa.Table, new: pa.Table, ids: list[str], common: list[str], output: str,
                        catalog: str | None) -> None:
    arrays = [logged.column(n) for n in ids]
    names = list(ids)
    for name in common:
        arrays += [logged.column(name), new.column(name)]
        names += [f"logged_{name}", f"new_{name}"]
    side = pa.Table.from_arrays(arrays, names=names)
    if parse_table(output) is not None:
        LedgerTable(output, catalog).append(side, {"replay": True})
        return
    os.makedirs(output, exist_ok=True)
    pq.write_table(side, os.path.join(output, "replay.parquet"))
