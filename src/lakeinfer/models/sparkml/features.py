"""Spark ML feature stages that index, encode and assemble columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ModelLoadError
from ._reader import StageMeta
from ._stage import NUMBER, STRING, VECTOR, Col, Frame, Stage, register

__all__ = ["StringIndexerModel", "VectorAssembler"]


def _columns(stage: Stage, single: str, multi: str) -> list[str]:
    """A stage's inputCol/outputCol or inputCols/outputCols, whichever it set."""
    many = stage.param(multi)
    if many:
        return list(many)
    one = stage.param(single)
    return [one] if one else []


@register
class StringIndexerModel(Stage):
    """Labels to indices in the stored order (``labelsArray``; ``labels`` before Spark 3.0).

    Null or an unseen label: ``error`` fails the row, ``skip`` drops it, ``keep`` gives the index
    ``len(labels)``. A numeric input column is cast to a string first, as Spark casts it.
    """

    spark_classes = ("StringIndexerModel",)
    reads = frozenset({"inputCol", "outputCol", "inputCols", "outputCols", "handleInvalid"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.ins = _columns(self, "inputCol", "inputCols")
        self.outs = _columns(self, "outputCol", "outputCols")
        data = meta.data().to_pylist()[0]
        labels = data.get("labelsArray") or ([data["labels"]] if "labels" in data else None)
        if labels is None or len(labels) != len(self.ins):
            raise ModelLoadError(f"{self.name}: stored labels do not match its {len(self.ins)} input columns")
        self.labels = [pa.array(list(ls), type=pa.string()) for ls in labels]
        self.handle = str(self.param("handleInvalid", "error"))

    def inputs(self) -> dict[str, str]:
        return dict.fromkeys(self.ins, STRING)

    def outputs(self) -> dict[str, str]:
        return dict.fromkeys(self.outs, NUMBER)

    def transform(self, frame: Frame) -> None:
        for name, out, labels in zip(self.ins, self.outs, self.labels, strict=True):
            col = frame.col(name, self, STRING)
            array = pa.array(col.values, type=pa.string(), mask=col.null)
            index = pc.index_in(array, value_set=labels)
            invalid = np.asarray(index.is_null())
            values = np.asarray(index.fill_null(len(labels)).to_numpy(zero_copy_only=False), dtype=np.float64)
            if invalid.any() and self.handle != "keep":
                def reason(row: int, col: Col = col, name: str = name) -> str:
                    value = col.values[row]
                    what = "null" if value is None else f"{value!r}, a label it did not see in training"
                    return f"column '{name}' is {what} (StringIndexer handleInvalid='{self.handle}')"
                frame.flag(invalid, name, reason, drop=self.handle == "skip")
            frame.cols[out] = Col(NUMBER, values)


@register
class VectorAssembler(Stage):
    """Numbers and vectors into one vector. A null or NaN: ``error`` fails the row, ``skip``
    drops it, ``keep`` assembles NaN (a null vector: as many NaN as its size)."""

    spark_classes = ("VectorAssembler",)
    reads = frozenset({"inputCols", "outputCol", "handleInvalid"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.ins = list(self.param("inputCols") or [])
        self.out = str(self.param("outputCol"))
        self.handle = str(self.param("handleInvalid", "error"))

    def inputs(self) -> dict[str, str]:
        return dict.fromkeys(self.ins, "")

    def outputs(self) -> dict[str, str]:
        return {self.out: VECTOR}

    def transform(self, frame: Frame) -> None:
        parts = []
        for name in self.ins:
            col = frame.col(name, self, NUMBER, VECTOR)
            values = col.values if col.kind == VECTOR else col.values[:, None]
            parts.append(values)
            if self.handle == "keep":
                continue
            invalid = col.nulls() | np.isnan(values).any(axis=1)
            if invalid.any():
                def reason(row: int, col: Col = col, name: str = name) -> str:
                    what = "null" if col.nulls()[row] else "NaN" if col.kind == NUMBER else "a vector holding NaN"
                    return f"column '{name}' is {what} (VectorAssembler handleInvalid='{self.handle}')"
                frame.flag(invalid, name, reason, drop=self.handle == "skip")
        matrix = np.hstack(parts) if parts else np.zeros((frame.rows, 0))
        frame.cols[self.out] = Col(VECTOR, np.ascontiguousarray(matrix, dtype=np.float64))


def describe_labels(stage: Any) -> list[list[str]]:
    return [ls.to_pylist() for ls in getattr(stage, "labels", [])]
