"""Spark ML stages that scale, normalize and project vectors."""

from __future__ import annotations

import numpy as np

from ...errors import ModelLoadError
from ._reader import StageMeta, dense_matrix, dense_vector
from ._stage import VECTOR, Col, Frame, Stage, register

__all__ = ["MaxAbsScalerModel", "MinMaxScalerModel", "Normalizer", "PCAModel", "StandardScalerModel"]


class VectorStage(Stage):
    """A stage mapping one vector column to another of the same rows.

    Spark's functions here take the vector as an object and fail the whole job on a null one,
    so a null vector is a bad row under every setting.
    """

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.inp = str(self.param("inputCol"))
        self.out = str(self.param("outputCol"))

    def inputs(self) -> dict[str, str]:
        return {self.inp: VECTOR}

    def outputs(self) -> dict[str, str]:
        return {self.out: VECTOR}

    def width(self) -> int | None:
        """The input size the stored data was fitted on (None: any)."""
        return None

    def transform(self, frame: Frame) -> None:
        col = frame.col(self.inp, self, VECTOR)
        null = col.nulls()
        want = self.width()
        if want is not None and len(col.values) and col.width != want:
            frame.flag(~null, self.inp, lambda row: (
                f"column '{self.inp}' holds vectors of size {col.width}; {self.name} was fitted on size {want}"))
            values = np.zeros((frame.rows, want))
        else:
            values = col.values
        if null.any():
            frame.flag(null, self.inp, lambda row: f"column '{self.inp}' is null ({self.meta.short_class})")
        with np.errstate(all="ignore"):
            out = self.compute(values)
        frame.cols[self.out] = Col(VECTOR, np.ascontiguousarray(out, dtype=np.float64),
                                   null.copy() if null.any() else None)

    def compute(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@register
class StandardScalerModel(VectorStage):
    """``(x - mean) * (1 / std)`` as Spark computes it: the mean only under ``withMean``, the
    scale only under ``withStd``, and a zero std scales by 0 (not a division by zero)."""

    spark_classes = ("StandardScalerModel",)
    reads = frozenset({"inputCol", "outputCol", "withMean", "withStd"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        row = meta.data().to_pylist()[0]
        self.mean = dense_vector(row["mean"])
        std = dense_vector(row["std"])
        with np.errstate(divide="ignore"):
            self.scale = np.where(std == 0, 0.0, 1.0 / std)
        self.with_mean = bool(self.param("withMean", False))
        self.with_std = bool(self.param("withStd", True))

    def width(self) -> int:
        return len(self.scale)

    def compute(self, values: np.ndarray) -> np.ndarray:
        out = values - self.mean if self.with_mean else values
        return out * self.scale if self.with_std else out


@register
class MinMaxScalerModel(VectorStage):
    """Each feature from [originalMin, originalMax] to [min, max]: ``(x - lo) * (scale / range)
    + min``; a feature constant in training gives ``(min + max) / 2``; NaN stays NaN."""

    spark_classes = ("MinMaxScalerModel",)
    reads = frozenset({"inputCol", "outputCol", "min", "max"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        row = meta.data().to_pylist()[0]
        self.lo = dense_vector(row["originalMin"])
        hi = dense_vector(row["originalMax"])
        self.min = float(self.param("min", 0.0))
        self.max = float(self.param("max", 1.0))
        span = hi - self.lo
        with np.errstate(divide="ignore", invalid="ignore"):
            self.factor = np.where(span != 0, (self.max - self.min) / span, 0.0)

    def width(self) -> int:
        return len(self.lo)

    def compute(self, values: np.ndarray) -> np.ndarray:
        scaled = np.where(self.factor != 0, (values - self.lo) * self.factor + self.min,
                          (self.min + self.max) / 2)
        return np.where(np.isnan(values), values, scaled)


@register
class MaxAbsScalerModel(VectorStage):
    """Each feature times ``1 / maxAbs`` (a feature all zero in training is left as it is)."""

    spark_classes = ("MaxAbsScalerModel",)
    reads = frozenset({"inputCol", "outputCol"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        top = dense_vector(meta.data().to_pylist()[0]["maxAbs"])
        self.scale = 1.0 / np.where(top == 0, 1.0, top)

    def width(self) -> int:
        return len(self.scale)

    def compute(self, values: np.ndarray) -> np.ndarray:
        return values * self.scale


@register
class Normalizer(VectorStage):
    """Each vector divided by its p-norm (p >= 1, inf: the largest absolute value, where Spark's
    running maximum passes over NaN); a zero norm leaves the vector as it is."""

    spark_classes = ("Normalizer",)
    reads = frozenset({"inputCol", "outputCol", "p"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.p = float(self.param("p", 2.0))
        if not self.p >= 1:
            raise ModelLoadError(f"{self.name}: p = {self.p} (Spark needs p >= 1)")

    def compute(self, values: np.ndarray) -> np.ndarray:
        size = np.abs(values)
        if self.p == 1:
            norm = size.sum(axis=1)
        elif self.p == 2:
            norm = np.sqrt((values * values).sum(axis=1))
        elif self.p == np.inf:
            norm = np.where(np.isnan(size), 0.0, size).max(axis=1, initial=0.0)
        else:
            norm = np.power(np.power(size, self.p).sum(axis=1), 1.0 / self.p)
        return np.where((norm != 0)[:, None], values / norm[:, None], values)


@register
class PCAModel(VectorStage):
    """The vector times the stored principal components (``pc``, d x k); Spark does not center."""

    spark_classes = ("PCAModel",)
    reads = frozenset({"inputCol", "outputCol", "k"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.pc = dense_matrix(meta.data().to_pylist()[0]["pc"])

    def width(self) -> int:
        return int(self.pc.shape[0])

    def compute(self, values: np.ndarray) -> np.ndarray:
        return values @ self.pc
