"""Spark ML stages that fill in and bucket single numbers: ImputerModel and Bucketizer (also the
model a QuantileDiscretizer fits)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ...errors import ModelLoadError
from ._reader import StageMeta
from ._stage import NUMBER, Col, Frame, Stage, register
from .features import choice, columns

__all__ = ["Bucketizer", "ImputerModel"]


def _double(value: object) -> float:
    """A double param as Spark's JSON writes it (NaN and infinities as the strings 'NaN', 'Inf')."""
    return float(value)  # type: ignore[arg-type]


@register
class ImputerModel(Stage):
    """Null, and values equal to ``missingValue`` (NaN by default: Spark SQL's NaN equals NaN),
    replaced by the fitted surrogate of their column (``surrogateDF``). The output keeps the
    input's type, as Spark casts it back: an integer column gets the surrogate truncated."""

    spark_classes = ("ImputerModel",)
    reads = frozenset({"inputCol", "outputCol", "inputCols", "outputCols", "missingValue"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.ins = columns(self, "inputCol", "inputCols")
        self.outs = columns(self, "outputCol", "outputCols")
        row = meta.data().to_pylist()[0]
        missing = [name for name in self.ins if name not in row]
        if missing or len(self.ins) != len(self.outs):
            raise ModelLoadError(f"{self.name}: no stored surrogate for {missing or 'its columns'}")
        self.surrogates = [_double(row[name]) for name in self.ins]
        self.missing = _double(self.param("missingValue", "NaN"))

    def inputs(self) -> dict[str, str]:
        return dict.fromkeys(self.ins, NUMBER)

    def outputs(self) -> dict[str, str]:
        return dict.fromkeys(self.outs, NUMBER)

    def transform(self, frame: Frame) -> None:
        for name, out, surrogate in zip(self.ins, self.outs, self.surrogates, strict=True):
            col = frame.col(name, self, NUMBER)
            values = col.values
            fill = col.nulls() | (np.isnan(values) if np.isnan(self.missing) else values == self.missing)
            if col.origin is not None and (pa.types.is_integer(col.origin) or pa.types.is_boolean(col.origin)):
                surrogate = float(np.trunc(surrogate))
            elif col.origin is not None and pa.types.is_float32(col.origin):
                surrogate = float(np.float32(surrogate))
            frame.cols[out] = Col(NUMBER, np.where(fill, surrogate, values), None, col.origin)


def _order_keys(values: np.ndarray) -> np.ndarray:
    """Doubles as int64 keys in Java's ``Double.compare`` order (-0.0 before 0.0), the order of
    the ``Arrays.binarySearch`` that Spark's Bucketizer calls."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
    return np.where(bits < 0, bits ^ np.int64(0x7FFFFFFFFFFFFFFF), bits)


@register
class Bucketizer(Stage):
    """Numbers to the index of their bucket among ``splits`` (``splitsArray`` for several
    columns): ``[s_i, s_i+1)``, the last bucket also holding its upper bound.

    As Spark: null gives null; NaN fails the row under ``error``, is dropped under ``skip``
    (with null: Spark's ``na.drop`` of every input column) and gets the extra bucket
    ``len(splits) - 1`` under ``keep``; a value outside the splits fails the row under every
    setting.
    """

    spark_classes = ("Bucketizer",)
    reads = frozenset({"inputCol", "outputCol", "inputCols", "outputCols", "splits", "splitsArray",
                       "handleInvalid"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.ins = columns(self, "inputCol", "inputCols")
        self.outs = columns(self, "outputCol", "outputCols")
        many = self.param("splitsArray") if self.param("inputCols") else None
        raw = many if many else [self.param("splits")]
        if len(raw) != len(self.ins) or any(s is None for s in raw):
            raise ModelLoadError(f"{self.name}: {len(raw)} split lists for {len(self.ins)} input columns")
        self.splits = [np.asarray([_double(v) for v in s], dtype=np.float64) for s in raw]
        for splits in self.splits:
            if len(splits) < 3 or not (np.diff(splits) > 0).all():
                raise ModelLoadError(f"{self.name}: splits {splits.tolist()} are not 3 or more increasing values")
        self.handle = choice(self, "handleInvalid", ("error", "skip", "keep"))

    def inputs(self) -> dict[str, str]:
        return dict.fromkeys(self.ins, NUMBER)

    def outputs(self) -> dict[str, str]:
        return dict.fromkeys(self.outs, NUMBER)

    def transform(self, frame: Frame) -> None:
        cols = [frame.col(name, self, NUMBER) for name in self.ins]
        if self.handle == "skip":  # Spark drops these rows before bucketing any column
            for name, col in zip(self.ins, cols, strict=True):
                bad = col.nulls() | np.isnan(col.values)
                if bad.any():
                    def reason(row: int, col: Col = col, name: str = name) -> str:
                        what = "null" if col.nulls()[row] else "NaN"
                        return f"column '{name}' is {what} (Bucketizer handleInvalid='skip')"
                    frame.flag(bad, name, reason, drop=True)
        for name, out, col, splits in zip(self.ins, self.outs, cols, self.splits, strict=True):
            frame.cols[out] = self._bucket(frame, name, col, splits)

    def _bucket(self, frame: Frame, name: str, col: Col, splits: np.ndarray) -> Col:
        values, null = col.values, col.nulls()
        nan = np.isnan(values) & ~null
        found = np.searchsorted(_order_keys(splits), _order_keys(values), side="right")
        last = values == splits[-1]
        bucket = np.where(last, len(splits) - 2, found - 1).astype(np.float64)
        outside = ~nan & ~null & ~last & ((found == 0) | (found == len(splits)))
        if outside.any():
            frame.flag(outside, name, lambda row: (
                f"column '{name}' is {values[row]!r}, outside the Bucketizer splits "
                f"[{splits[0]!r}, {splits[-1]!r}]"))
        if nan.any():
            if self.handle == "keep":
                bucket[nan] = len(splits) - 1
            elif self.handle == "error":
                frame.flag(nan, name, lambda row: f"column '{name}' is NaN (Bucketizer handleInvalid='error')")
        return Col(NUMBER, np.where(null, np.nan, bucket), null.copy() if null.any() else None)
