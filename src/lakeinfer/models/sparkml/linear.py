"""Spark ML linear models and naive Bayes: LogisticRegressionModel, LinearRegressionModel,
LinearSVCModel and NaiveBayesModel, each computing what its Scala ``predictRaw``,
``raw2probabilityInPlace`` and ``raw2prediction`` compute."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ModelLoadError
from ._predictor import Classifier, Predictor
from ._reader import StageMeta, dense_matrix, dense_vector
from ._stage import Frame, register

__all__ = ["LinearRegressionModel", "LinearSVCModel", "LogisticRegressionModel", "NaiveBayesModel"]


def _row(meta: StageMeta) -> dict[str, Any]:
    rows = meta.data().to_pylist()
    if not rows:
        raise ModelLoadError(f"{meta.path}: the model's data/ holds no row")
    return rows[0]


def _softmax(raw: np.ndarray) -> np.ndarray:
    """Spark's ``Utils.softmax`` per row: a +Infinity takes all, else exp(v - max) / sum."""
    top = np.max(raw, axis=1, keepdims=True) if raw.shape[1] else raw
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.exp(raw - np.where(np.isposinf(top), 0.0, top))
        out /= out.sum(axis=1, keepdims=True)
    infinite = np.isposinf(raw)
    if infinite.any():
        rows = infinite.any(axis=1)
        first = np.argmax(infinite[rows], axis=1)
        out[rows] = 0.0
        out[np.flatnonzero(rows), first] = 1.0
    return out


@register
class LogisticRegressionModel(Classifier):
    """Binary: rawPrediction (-m, m) with m = w.x + b, probability (1/(1+e^m), its complement),
    prediction m > logit(threshold). Multinomial: margins W x + b, softmax, arg max."""

    spark_classes = ("LogisticRegressionModel",)
    reads = Classifier.reads | {"threshold"}

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        data = _row(meta)
        if "coefficientMatrix" in data:
            self.coef = dense_matrix(data["coefficientMatrix"])
            self.intercept = dense_vector(data["interceptVector"])
            self.multinomial = bool(data["isMultinomial"])
        else:  # Spark 2.0 and before: one coefficient vector and an intercept
            self.coef = dense_vector(data["coefficients"])[None, :]
            self.intercept = np.asarray([float(data["intercept"])])
            self.multinomial = False
        self.num_features = self.coef.shape[1]
        self.set_classes(int(data["numClasses"]))
        if not self.multinomial:
            # getThreshold: thresholds (t0, t1), when set, stand for 1 / (1 + t0 / t1)
            ts = self.thresholds
            with np.errstate(divide="ignore"):  # a threshold of 0 for class 1: t0 / 0 is +Infinity, t 0
                t = float(1.0 / (1.0 + ts[0] / ts[1])) if ts is not None else float(self.param("threshold", 0.5))
            self.threshold = t
            self.raw_threshold = -np.inf if t == 0.0 else np.inf if t == 1.0 else float(np.log(t / (1.0 - t)))
            self.w = np.ascontiguousarray(self.coef[0])
            self.b = float(self.intercept[0])

    def margin(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w + self.b

    def raw(self, x: np.ndarray) -> np.ndarray:
        if self.multinomial:
            return x @ self.coef.T + self.intercept
        m = self.margin(x)
        return np.stack([-m, m], axis=1)

    def raw2probability(self, raw: np.ndarray) -> np.ndarray:
        if self.multinomial:
            return _softmax(raw)
        with np.errstate(over="ignore"):
            p0 = 1.0 / (1.0 + np.exp(-raw[:, 0]))
        return np.stack([p0, 1.0 - p0], axis=1)

    def raw2prediction(self, raw: np.ndarray) -> np.ndarray:
        if self.multinomial:
            return super().raw2prediction(raw)
        return (raw[:, 1] > self.raw_threshold).astype(np.float64)

    def probability2prediction(self, prob: np.ndarray) -> np.ndarray:
        if self.multinomial:
            return super().probability2prediction(prob)
        return (prob[:, 1] > self.threshold).astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.multinomial:
            return super().predict(x)
        with np.errstate(over="ignore"):
            score = 1.0 / (1.0 + np.exp(-self.margin(x)))
        return (score > self.threshold).astype(np.float64)


@register
class LinearRegressionModel(Predictor):
    """prediction = w.x + b."""

    spark_classes = ("LinearRegressionModel",)

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        data = _row(meta)
        self.w = dense_vector(data["coefficients"])
        self.b = float(data["intercept"])
        self.num_features = len(self.w)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w + self.b


@register
class LinearSVCModel(Classifier):
    """rawPrediction (-m, m) with m = w.x + b; prediction m > threshold (no probability)."""

    spark_classes = ("LinearSVCModel",)
    probabilistic = False
    reads = Classifier.reads | {"threshold"}

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        data = _row(meta)
        self.w = dense_vector(data["coefficients"])
        self.b = float(data["intercept"])
        self.num_features = len(self.w)
        self.threshold = float(self.param("threshold", 0.0))
        self.set_classes(2)

    def raw(self, x: np.ndarray) -> np.ndarray:
        m = x @ self.w + self.b
        return np.stack([-m, m], axis=1)

    def raw2prediction(self, raw: np.ndarray) -> np.ndarray:
        return (raw[:, 1] > self.threshold).astype(np.float64)


@register
class NaiveBayesModel(Classifier):
    """Log-likelihoods per class (multinomial, complement, bernoulli, gaussian), softmax.

    Spark's transform fails on a row its model type cannot take (a negative value; for
    bernoulli, a value other than 0 or 1); such a row is a bad record here."""

    spark_classes = ("NaiveBayesModel",)
    reads = Classifier.reads | {"modelType"}

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        data = _row(meta)
        self.pi = dense_vector(data["pi"])
        self.theta = dense_matrix(data["theta"])
        self.kind = str(self.param("modelType", "multinomial"))
        self.num_features = self.theta.shape[1]
        self.set_classes(len(self.pi))
        if self.kind == "bernoulli":
            neg = np.log1p(-np.exp(self.theta))
            self.theta_minus_neg = self.theta - neg
            self.pi_minus_theta_sum = self.pi + neg.sum(axis=1)
        elif self.kind == "gaussian":
            sigma = data.get("sigma")
            if sigma is None:
                raise ModelLoadError(f"{self.name}: a gaussian model without sigma in its data")
            self.sigma = dense_matrix(sigma)
            self.log_var_sum = np.log(self.sigma).sum(axis=1)
        elif self.kind not in ("multinomial", "complement"):
            raise ModelLoadError(f"{self.name}: modelType {self.kind!r} is not one Spark knows")

    def transform(self, frame: Frame) -> None:
        x = self.matrix(frame)
        if self.kind != "gaussian" and len(x):
            if self.kind == "bernoulli":
                bad = ((x != 0.0) & (x != 1.0)).any(axis=1)
                need = "0 or 1 feature values"
            else:
                bad = ((x != 0.0) & ~(x > 0.0)).any(axis=1)
                need = "nonnegative feature values"
            if bad.any():
                frame.flag(bad, self.features, lambda row: f"column '{self.features}' holds "
                           f"{x[row].tolist()[:10]}: {self.kind} naive Bayes requires {need}")
        super().transform(frame)

    def raw(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "multinomial":
            return x @ self.theta.T + self.pi
        if self.kind == "bernoulli":
            return x @ self.theta_minus_neg.T + self.pi_minus_theta_sum
        if self.kind == "complement":
            raw = x @ self.theta.T
            top = raw.max(axis=1, keepdims=True)
            log_sum_exp = np.log(np.exp(raw - top).sum(axis=1, keepdims=True)) + top
            return np.asarray(raw - log_sum_exp)
        d = x[:, None, :] - self.theta[None, :, :]
        s = (d * d / self.sigma[None, :, :]).sum(axis=2)
        return np.asarray(self.pi - (s + self.log_var_sum) / 2)

    def raw2probability(self, raw: np.ndarray) -> np.ndarray:
        return _softmax(raw)
