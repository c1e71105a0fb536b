"""What Spark ML's PredictionModel, ClassificationModel and ProbabilisticClassificationModel do
around a model's own math: which output columns exist, how raw scores become probabilities and
a prediction, and what ``thresholds`` change.

Spark computes each output from the one before when that one is switched on (prediction from
rawPrediction, else from probability, else from the features) and some models answer the
last case with a shortcut of their own; the subclasses keep those differences.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ...errors import ModelLoadError
from ._reader import StageMeta
from ._stage import NUMBER, VECTOR, Col, Frame, Stage, StageError

__all__ = ["Classifier", "Predictor", "argmax"]


def argmax(values: np.ndarray, *, start: float | None = None) -> np.ndarray:
    """Spark's arg max per row: the first strictly greater value wins, so a NaN never does
    (numpy's argmax would pick the first NaN). ``DenseVector.argmax`` starts from the first
    value; ``probability2prediction`` with thresholds starts from ``start`` (-Infinity)."""
    best = values[:, 0].copy() if start is None else np.full(len(values), start)
    index = np.zeros(len(values), dtype=np.float64)
    for k in range(0 if start is not None else 1, values.shape[1]):
        greater = values[:, k] > best
        index[greater] = k
        best = np.where(greater, values[:, k], best)
    return index


class Predictor(Stage):
    """A PredictionModel: reads one vector column and adds ``predictionCol`` (none when empty)."""

    task: str = "regression"
    reads: ClassVar[frozenset[str]] = frozenset({"featuresCol", "predictionCol"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.features = str(self.param("featuresCol", "features"))
        self.prediction_col = str(self.param("predictionCol", "prediction") or "")
        self.num_features = -1  # a subclass sets it from its data

    def refuse_if_set(self, param: str) -> None:
        """A param this reader does not implement but whose non-empty value changes the output."""
        value = self.param(param)
        if value:
            raise ModelLoadError(f"{self.name} sets {param}={value!r}, which this reader does not "
                                 "implement; score this model with --engine spark")

    def inputs(self) -> dict[str, str]:
        return {self.features: VECTOR}

    def outputs(self) -> dict[str, str]:
        return {self.prediction_col: NUMBER} if self.prediction_col else {}

    def matrix(self, frame: Frame) -> np.ndarray:
        """The feature vectors (rows, numFeatures); a null vector is a row Spark's UDF fails on."""
        col = frame.col(self.features, self, VECTOR)
        values = col.values
        if frame.rows == 0:
            return np.zeros((0, self.num_features))
        if values.shape[1] != self.num_features:
            raise StageError(f"{self.name} was trained on {self.num_features} features; column "
                             f"'{self.features}' holds vectors of {values.shape[1]}")
        if col.null is not None and col.null.any():
            frame.flag(col.null, self.features,
                       lambda row: f"column '{self.features}' is null ({self.meta.short_class} needs a vector)")
        return values

    def transform(self, frame: Frame) -> None:
        x = self.matrix(frame)
        if self.prediction_col:
            frame.cols[self.prediction_col] = Col(NUMBER, self.predict(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Classifier(Predictor):
    """A ClassificationModel (``rawPredictionCol``) or, with ``probabilistic``, a
    ProbabilisticClassificationModel (also ``probabilityCol`` and ``thresholds``)."""

    task = "classification"
    probabilistic: ClassVar[bool] = True
    reads = Predictor.reads | {"rawPredictionCol", "probabilityCol", "thresholds"}

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.raw_col = str(self.param("rawPredictionCol", "rawPrediction") or "")
        self.prob_col = str(self.param("probabilityCol", "probability") or "") if self.probabilistic else ""
        # thresholds has no default in Spark: defined only when set
        found = self.param("thresholds") if self.probabilistic else None
        self.thresholds: np.ndarray | None = None if found is None else np.asarray(found, dtype=np.float64)
        self.num_classes = 2

    def set_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classes: tuple[Any, ...] = tuple(range(num_classes))
        if self.thresholds is not None and len(self.thresholds) != num_classes:
            raise ModelLoadError(f"{self.name} has {len(self.thresholds)} thresholds for {num_classes} "
                                 "classes (Spark refuses to transform with it)")

    def outputs(self) -> dict[str, str]:
        out = {}
        if self.raw_col:
            out[self.raw_col] = VECTOR
        if self.prob_col:
            out[self.prob_col] = VECTOR
        return {**out, **super().outputs()}

    def transform(self, frame: Frame) -> None:
        x = self.matrix(frame)
        raw = self.raw(x) if self.raw_col or self.prob_col else None
        prob = None
        if self.raw_col and raw is not None:
            frame.cols[self.raw_col] = Col(VECTOR, raw)
        if self.prob_col:
            assert raw is not None
            prob = self.raw2probability(raw.copy())
            frame.cols[self.prob_col] = Col(VECTOR, prob)
        if self.prediction_col:
            if self.raw_col:
                assert raw is not None
                pred = self.raw2prediction(raw)
            elif prob is not None:
                pred = self.probability2prediction(prob)
            else:
                pred = self.predict(x)
            frame.cols[self.prediction_col] = Col(NUMBER, pred)

    # the model's math: raw scores, and for probabilistic models their probabilities
    def raw(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def raw2probability(self, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def raw2prediction(self, raw: np.ndarray) -> np.ndarray:
        if self.thresholds is None:
            return argmax(raw)
        return self.probability2prediction(self.raw2probability(raw.copy()))

    def probability2prediction(self, prob: np.ndarray) -> np.ndarray:
        if self.thresholds is None:
            return argmax(prob)
        with np.errstate(divide="ignore", invalid="ignore"):
            # p / 0 is +Infinity (that class always wins) unless p is 0 too (NaN: never wins)
            scaled = prob / self.thresholds
        return argmax(scaled, start=-np.inf)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.raw2prediction(self.raw(x))
